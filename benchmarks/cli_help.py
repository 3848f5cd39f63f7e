"""Wall time of `convlens --help` and of an argument error, as a user starts them.

Run: ``python benchmarks/cli_help.py [--runs 15]``. Each case runs the installed console
script (the ``convlens`` next to this Python) in a fresh process ``--runs`` times and reports
the median and fastest wall time and the median CPU time, next to a bare ``python -c pass``
in the same run (the interpreter's own start-up, which no CLI can beat). Target: the median
wall time under 1 s on two CPU
cores for both cases. The CLI keeps these fast by importing torch and convlens internals
only inside the commands that need them (``convlens/__init__`` is lazy).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_SECONDS = 1.0


def _console_script() -> str:
    beside = Path(sys.executable).with_name("convlens")
    found = str(beside) if beside.exists() else shutil.which("convlens")
    if found is None:
        raise SystemExit("no 'convlens' console script found: pip install -e . first")
    return found


def run_times(argv: list[str], runs: int, expect: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) seconds of ``runs`` fresh runs of ``argv`` (each must
    exit with ``expect``). CPU time shows what the command costs when the machine is busy
    and the wall time includes waiting for a core."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, check=False)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != expect:
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}, expected {expect}")
    return walls, cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="fresh processes per case")
    args = parser.parse_args()
    script = _console_script()
    cases = [
        ("python -c pass (interpreter start-up)", [sys.executable, "-c", "pass"], 0),
        ("convlens --help", [script, "--help"], 0),
        ("convlens explain --bogus (argument error)", [script, "explain", "--bogus"], 2),
        ("convlens --version", [script, "--version"], 0),
    ]
    print(f"{'case':<44} {'wall median':>11} {'wall best':>9} {'CPU median':>10}  target (wall)")
    failed = False
    for name, argv, expect in cases:
        walls, cpus = run_times(argv, args.runs, expect)
        median = statistics.median(walls)
        verdict = "-" if name.startswith("python") else f"< {TARGET_SECONDS:g} s"
        if not name.startswith("python") and median >= TARGET_SECONDS:
            verdict += " MISSED"
            failed = True
        print(
            f"{name:<44} {median:>11.3f} {min(walls):>9.3f} {statistics.median(cpus):>10.3f}"
            f"  {verdict}"
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
