"""The suite's one ``torchrun --nproc_per_node 2`` launch (gloo on the CPU) and the commands
it runs; the tests compare each command's output with the same command in one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import convlens

# each entry: the command without --out; its output goes to the folder of its name
TWO_PROCESS_COMMANDS = {
    "scan": [
        "scan",
        "shapes:18",
        "--model",
        "synthetic-shapes",
        "--layers",
        "features.5,features.15",
        "--top",
        "3",
        "--batch-size",
        "4",
        "--projections",
        "deconvnet",
    ],
    "embed": [
        *["embed", "shapes:18", "--model", "synthetic-shapes", "--map", "none"],
        *["--batch-size", "4"],
    ],
    "attribute": [
        *["attribute", "shapes:7", "--model", "synthetic-shapes", "--size", "12"],
        *["--target", "label", "--batch-size", "2"],
    ],
}


def torchrun_commands(folder: Path) -> Path:
    """Runs every command of `TWO_PROCESS_COMMANDS` in one launch of two processes
    (`tests.helpers.torchrun_commands`), writing ``folder/<name>``; returns ``folder``."""
    launcher = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = [launcher] if launcher else [sys.executable, "-m", "torch.distributed.run"]
    driver = Path(__file__).with_name("torchrun_commands.py")
    commands = [[*args, "--out", str(folder / name)] for name, args in TWO_PROCESS_COMMANDS.items()]
    # the workers import the convlens this process imported
    package = str(Path(convlens.__file__).parents[1])
    path = os.pathsep.join(p for p in (package, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [*command, "--standalone", "--nproc_per_node", "2", str(driver), json.dumps(commands)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return folder
