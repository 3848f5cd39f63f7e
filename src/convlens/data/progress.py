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


class Progress:
    """A counter of ``total`` steps shown on ``stream`` (default stderr): a tqdm bar when it is
    a terminal, else a line ``desc: i/total`` whenever the count passes a reported step
    (`is_reported_step`); ``initial``: steps already done (not printed again). ``disable``:
    no output. ``leave``: keep the finished bar on screen (terminals only). Use as a context
    manager, or call `close`."""

    def __init__(
        self,
        total: int | None = None,
        *,
        desc: str = "",
        initial: int = 0,
        unit: str = "it",
        leave: bool = False,
        disable: bool = False,
        stream=None,
    ) -> None:
        self.total, self.desc, self.count, self.disable = total, desc, initial, disable
        self.stream = sys.stderr if stream is None else stream
        self.bar = None
        if not disable and is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=self.stream
            )

    def update(self, steps: int = 1) -> None:
        """Count ``steps`` more done."""
        before, self.count = self.count, self.count + steps
        if self.bar is not None:
            self.bar.update(steps)
        elif not self.disable and _passes_reported_step(before, self.count, self.total):
            of = f"/{self.total}" if self.total is not None else ""
            print(f"{self.desc}: {self.count}{of}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    when it is a terminal, else a line ``desc: i/total`` after each reported step (`Progress`).
    ``disable``: no output at all. ``leave``: keep the finished bar on screen (terminals
    only)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc=desc, leave=leave, disable=disable, stream=stream) as counter:
        for item in iterable:
            yield item
            counter.update()


def _passes_reported_step(before: int, after: int, total: int | None) -> bool:
    """Whether a step in ``(before, after]`` gets a line (`is_reported_step`)."""
    if after <= before:
        return False
    if total is not None:
        every = max(1, total // PLAIN_LINES)
        return after // every > before // every or before < total <= after
    every = 10 ** (len(str(after)) - 1)
    return after // every > before // every


def is_reported_step(step: int, total: int | None) -> bool:
    """Whether step ``step`` (1-based) of ``total`` gets a plain progress line: every
    ``total // PLAIN_LINES``-th step and the last; with no total, steps 1-9, then 10, 20,
    ... 90, then 100, 200, ... (about nine lines per power of ten)."""
    return _passes_reported_step(step - 1, step, total)


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (where a redrawn bar reads well)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
