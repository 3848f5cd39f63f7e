"""One progress display for every long loop: a tqdm bar on a terminal, plain lines elsewhere.

tqdm redraws its bar with carriage returns, which piped or captured output (a log file, CI)
shows as one growing line or blank lines. `progress_bar` draws the bar only when stderr is
a terminal; otherwise it prints single lines, ``desc: 3/12``, so a log reads in order: at
most about `PLAIN_LINES` of them per loop (every tenth of the way, and the last step), so a
loop of thousands of steps does not flood the log.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
PLAIN_LINES = 10


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
    if is_terminal(stream):
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, total=total, leave=leave, file=stream)
        return
    of = f"/{total}" if total is not None else ""
    for step, item in enumerate(iterable, start=1):
        yield item
        if is_reported_step(step, total):
            print(f"{desc}: {step}{of}", file=stream, flush=True)


def is_reported_step(step: int, total: int | None) -> bool:
    """Whether step ``step`` (1-based) of ``total`` gets a plain progress line: every
    ``total // PLAIN_LINES``-th step and the last; with no total, steps 1-9, then 10, 20,
    ... 90, then 100, 200, ... (about nine lines per power of ten)."""
    if total is not None:
        return step == total or step % max(1, total // PLAIN_LINES) == 0
    every = 10 ** (len(str(step)) - 1)
    return step % every == 0


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (where a redrawn bar reads well)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
