"""Peak memory of a fresh process, for the benchmarks that check memory stays flat in the
data-set size (`scan_speed.py`, `attribute_speed.py`).

A benchmark re-runs itself as a child with ``--rss-child COUNT --batch-size B``; the child
does its work and calls `print_own_peak_rss`, and the parent reads the figure with
`child_peak_rss_mb`. VmHWM is read from ``/proc/self/status`` because ``ru_maxrss`` would
keep the parent's peak across exec.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def print_own_peak_rss() -> None:
    """Print this process's peak resident set size in MiB (VmHWM)."""
    status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
    print(int(status.split()[0]) / 1024)


def child_peak_rss_mb(script: str, count: int, batch_size: int) -> float:
    """Peak RSS (MiB) of ``python script --rss-child count --batch-size batch_size``: the
    last line it prints."""
    command = [sys.executable, script, "--rss-child", str(count), "--batch-size", str(batch_size)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])
