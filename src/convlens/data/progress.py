"""One progress display for every long loop: a tqdm bar on a terminal, plain lines elsewhere.

tqdm redraws its bar with carriage returns, which piped or captured output (a log file, CI)
shows as one growing line or blank lines. `progress_bar` draws the bar only when stderr is
a terminal; otherwise it prints one line per step, ``desc: 3/12``, so a log reads in order.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_bar(
    iterable: Iterable[T],
    *,
    desc: str = "",
    disable: bool = False,
    total: int | None = None,
    leave: bool = False,
    stream=None,
) -> Iterator[T]:
    """Iterate over ``iterable`` showing progress on ``stream`` (default stderr): a tqdm bar
    when it is a terminal, else a line ``desc: i/total`` after each step. ``disable``: no
    output at all. ``leave``: keep the finished bar on screen (terminals only)."""
    if disable:
        yield from iterable
        return
    stream = sys.stderr if stream is None else stream
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if _is_terminal(stream):
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, total=total, leave=leave, file=stream)
        return
    of = f"/{total}" if total is not None else ""
    for step, item in enumerate(iterable, start=1):
        yield item
        print(f"{desc}: {step}{of}", file=stream, flush=True)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
