"""The server's one model, lent to one request at a time, and the jobs that can be cancelled.

Every method borrows the model (eval flags, hooks, backward rules) and gives it back; two
requests borrowing it at once would see each other's hooks and restore each other's flags.
`ModelDesk.run` therefore holds a lock for the whole computation, so hooks are never shared
and never outlive their request. A request waiting for the lock, or one whose method is
running, stops when its job is cancelled: while waiting it gives up at once; while running,
`stop_between_passes` raises before the next forward pass, and the method's ``finally``
blocks hand the model back before the lock is released.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from convlens.errors import ConvlensError
from convlens.layers.interrupt import Interrupted, stop_between_passes
from convlens.models.loading import LoadedModel

T = TypeVar("T")
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
LOCK_POLL_SECONDS = 0.05


class JobConflict(ConvlensError):
    """A job id already in use by a running request."""


class ModelDesk:
    """``model`` with a lock (`run`), one worker thread (`submit`), a second thread for work
    that never touches the model (`submit_pixels`) and a registry of running jobs (`job`,
    `cancel`)."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self._lock = threading.Lock()
        # One thread does the model's work: the lock serialises it anyway, and one thread
        # keeps the allocator's memory in one arena instead of one per web worker thread.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="convlens-model")
        # Decoding uploads and drawing answers need no model: on their own thread they
        # overlap the model's work for the next request instead of queueing behind it.
        self._pixels = ThreadPoolExecutor(1, thread_name_prefix="convlens-pixels")
        self._jobs: dict[str, threading.Event] = {}
        self._jobs_lock = threading.Lock()

    def run(self, work: Callable[[], T], cancel: threading.Event | None = None) -> T:
        """``work()`` with the model to itself. With ``cancel``: `Interrupted` as soon as it
        is set, while waiting for the model or before any further forward pass."""
        cancel = cancel or threading.Event()
        while not self._lock.acquire(timeout=LOCK_POLL_SECONDS):
            if cancel.is_set():
                raise Interrupted("cancelled while waiting for the model")
        try:
            if cancel.is_set():
                raise Interrupted("cancelled before it started")
            with stop_between_passes(self.model.module, cancel.is_set):
                return work()
        finally:
            self._lock.release()

    def submit(self, work: Callable[[], T], cancel: threading.Event | None = None) -> Future:
        """`run` on the desk's own worker thread; a queued job that is cancelled before its
        turn raises `Interrupted` without running."""
        return self._worker.submit(self.run, work, cancel)

    def submit_pixels(self, work: Callable[[], T], cancel: threading.Event | None = None) -> Future:
        """``work()`` on the desk's second thread, without the model (it must not touch
        ``model.module``); one cancelled before its turn raises `Interrupted` unrun."""
        return self._pixels.submit(_unless_cancelled, work, cancel or threading.Event())

    def close(self) -> None:
        """Stop both threads (after the jobs already queued)."""
        self._worker.shutdown(wait=True)
        self._pixels.shutdown(wait=True)

    @contextmanager
    def job(self, job_id: str | None) -> Iterator[threading.Event]:
        """A cancel event for one request, registered under ``job_id`` (when given) so that
        `cancel` can reach it; unregistered on exit. `ConvlensError` for a malformed id,
        `JobConflict` for one already running."""
        event = threading.Event()
        if job_id is None:
            yield event
            return
        if not JOB_ID.match(job_id):
            raise ConvlensError(
                f"job id {job_id[:80]!r} is malformed; use 1 to 64 letters, digits, '-' or '_'"
            )
        with self._jobs_lock:
            if job_id in self._jobs:
                raise JobConflict(f"job {job_id!r} is already running; choose another id")
            self._jobs[job_id] = event
        try:
            yield event
        finally:
            with self._jobs_lock:
                self._jobs.pop(job_id, None)

    def cancel(self, job_id: str) -> bool:
        """Ask job ``job_id`` to stop; False when no such job is running."""
        with self._jobs_lock:
            event = self._jobs.get(job_id)
        if event is None:
            return False
        event.set()
        return True

    def running_jobs(self) -> list[str]:
        """Ids of the jobs now registered (waiting or running)."""
        with self._jobs_lock:
            return sorted(self._jobs)


def _unless_cancelled(work: Callable[[], T], cancel: threading.Event) -> T:
    if cancel.is_set():
        raise Interrupted("cancelled before it started")
    return work()
