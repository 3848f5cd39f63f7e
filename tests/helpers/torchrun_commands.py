"""Several ``convlens`` commands in one ``torchrun`` launch, so the suite starts torch's
launcher and its workers once (each Python process spends seconds importing torch).

Run as ``torchrun ... tests/helpers/torchrun_commands.py JSON`` with ``JSON`` a list of
argument lists. The first command opens the process group itself (the CLI's own path under
torchrun); the group then stays open for the others, which find it open and use it, as the
CLI does inside a caller's group; it is closed once, at the end. One group per process:
opening a second one in the same launch reads the first one's stale addresses.
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from convlens.cli import main


def run_commands(commands: list[list[str]]) -> None:
    """Run each command through `convlens.cli.main` in order; stop at the first that fails
    (``SystemExit`` with its exit status)."""
    close = dist.destroy_process_group
    dist.destroy_process_group = lambda *args, **kwargs: None  # kept open for the next
    try:
        for args in commands:
            code = main(args)
            if code != 0:
                raise SystemExit(f"{args[0]} exited with {code}")
    finally:
        dist.destroy_process_group = close
        if dist.is_initialized():
            close()


if __name__ == "__main__":
    run_commands(json.loads(sys.argv[1]))
