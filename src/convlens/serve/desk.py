"""The server's one model, lent to one request at a time, and the stop signal of each request.

Every method borrows the model (eval flags, hooks, backward rules) and gives it back; two
requests borrowing it at once would see each other's hooks and restore each other's flags.
`ModelDesk.run` therefore holds a lock for the whole computation, so hooks are never shared
and never outlive their request. Each request holds a `Ticket`; stopping it (a cancel call
with the job's token, the client leaving, the time limit, shutdown) makes a request waiting
for the lock give up at once and a running method raise `Interrupted` before its next
forward pass (`stop_between_passes`); the method's ``finally`` blocks hand the model back
before the lock is released. At most ``max_queue`` requests are admitted at once (`admit`);
one more raises `QueueFull`.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from convlens.errors import ConvlensError
from convlens.layers.interrupt import Interrupted, stop_between_passes
from convlens.models.loading import LoadedModel

T = TypeVar("T")
LOCK_POLL_SECONDS = 0.05
RESERVATION_SECONDS = 600.0  # a job id not used by a request within this is forgotten
MAX_RESERVATIONS = 256  # beyond this many unused job ids, the oldest are forgotten
MAX_RETRY_AFTER = 60

# Why a ticket was stopped (`Ticket.reason`).
CANCELLED = "cancelled"
TIME_LIMIT = "time limit"
SHUTDOWN = "shutdown"


class JobConflict(ConvlensError):
    """A job id already used by a request (HTTP 409)."""


class UnknownJob(ConvlensError):
    """A job id this server did not hand out (or forgot: unused for `RESERVATION_SECONDS`,
    or finished before the last `MAX_RESERVATIONS`)."""


class CancelRefused(ConvlensError):
    """A cancel call without the token of the job it names (HTTP 403)."""


class QueueFull(ConvlensError):
    """As many requests as the queue holds are already waiting or running (HTTP 429);
    ``retry_after`` is a guess in whole seconds of when a place frees up."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TimeLimitExceeded(ConvlensError):
    """A request stopped at the server's time limit (HTTP 503)."""


class ServerClosing(ConvlensError):
    """The server is shutting down and takes no more work (HTTP 503)."""


@dataclass
class Ticket:
    """One request's stop signal: `stop` sets ``event`` (read by `ModelDesk.run`) and
    records the first ``reason`` (`CANCELLED`, `TIME_LIMIT` or `SHUTDOWN`)."""

    event: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None

    def stop(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()

    @property
    def stopped(self) -> bool:
        return self.event.is_set()


@dataclass
class _Job:
    token: str
    ticket: Ticket
    reserved_at: float
    started: bool = False


class ModelDesk:
    """``model`` with a lock (`run`), one worker thread (`submit`), a second thread for work
    that never touches the model (`submit_pixels`), the admission of requests (`admit`, at
    most ``max_queue`` at once) and the jobs that can be cancelled (`reserve_job`, `job`,
    `cancel`)."""

    def __init__(self, model: LoadedModel, max_queue: int = 8) -> None:
        self.model = model
        self.max_queue = max_queue
        self._lock = threading.Lock()
        # One thread does the model's work: the lock serialises it anyway, and one thread
        # keeps the allocator's memory in one arena instead of one per web worker thread.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="convlens-model")
        # Decoding uploads and drawing answers need no model: on their own thread they
        # overlap the model's work for the next request instead of queueing behind it.
        self._pixels = ThreadPoolExecutor(1, thread_name_prefix="convlens-pixels")
        self._state = threading.Lock()  # guards everything below
        self._jobs: dict[str, _Job] = {}
        # job id -> token of the last MAX_RESERVATIONS ended jobs, so that a cancel
        # crossing its job's end is told "already ended" (or refused for a wrong token)
        # and a reused id "already used", rather than "unknown"
        self._finished: OrderedDict[str, str] = OrderedDict()
        self._live: dict[int, Ticket] = {}
        self._admitted = 0
        self._closing = False
        self._seconds_per_request = 1.0  # running mean, for Retry-After

    def run(self, work: Callable[[], T], ticket: Ticket | None = None) -> T:
        """``work()`` with the model to itself. With ``ticket``: `Interrupted` as soon as
        it is stopped, while waiting for the model or before any further forward pass."""
        ticket = ticket or Ticket()
        while not self._lock.acquire(timeout=LOCK_POLL_SECONDS):
            if ticket.stopped:
                raise Interrupted("stopped while waiting for the model")
        try:
            if ticket.stopped:
                raise Interrupted("stopped before it started")
            with stop_between_passes(self.model.module, ticket.event.is_set):
                return work()
        finally:
            self._lock.release()

    def submit(self, work: Callable[[], T], ticket: Ticket | None = None) -> Future:
        """`run` on the desk's own worker thread; a queued job that is stopped before its
        turn raises `Interrupted` without running."""
        return self._worker.submit(self.run, work, ticket)

    def submit_pixels(self, work: Callable[[], T], ticket: Ticket | None = None) -> Future:
        """``work()`` on the desk's second thread, without the model (it must not touch
        ``model.module``); one stopped before its turn raises `Interrupted` unrun."""
        return self._pixels.submit(_unless_stopped, work, ticket or Ticket())

    @contextmanager
    def admit(self) -> Iterator[Ticket]:
        """A place in the queue for one request, and its ticket (stopped by `stop_all`).
        `QueueFull` when ``max_queue`` requests are already in, `ServerClosing` after
        `stop_all`."""
        ticket = Ticket()
        start = time.monotonic()
        with self._state:
            if self._closing:
                raise ServerClosing("the server is shutting down; start it again")
            if self._admitted >= self.max_queue:
                raise QueueFull(
                    f"the server is busy: {self._admitted} requests are waiting or running "
                    f"(its --queue limit is {self.max_queue}); retry in a moment",
                    self._retry_after(),
                )
            self._admitted += 1
            self._live[id(ticket)] = ticket
        try:
            yield ticket
        finally:
            with self._state:
                self._admitted -= 1
                self._live.pop(id(ticket), None)
                took = time.monotonic() - start
                self._seconds_per_request = 0.8 * self._seconds_per_request + 0.2 * took

    def _retry_after(self) -> int:
        """Whole seconds until a place is likely free: the mean request time (1 to 60)."""
        return int(min(MAX_RETRY_AFTER, max(1, math.ceil(self._seconds_per_request))))

    def reserve_job(self) -> tuple[str, str]:
        """A new job id and the secret token that cancels it (both random, from
        `secrets`); a request sends the id as its ``job``. Ids unused for
        `RESERVATION_SECONDS` are forgotten."""
        job_id, token = secrets.token_urlsafe(12), secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._state:
            self._forget_unused(now)
            self._jobs[job_id] = _Job(token, Ticket(), now)
        return job_id, token

    def _forget_unused(self, now: float) -> None:
        unused = sorted(
            (job.reserved_at, job_id) for job_id, job in self._jobs.items() if not job.started
        )
        excess = len(unused) - MAX_RESERVATIONS + 1
        for index, (reserved_at, job_id) in enumerate(unused):
            if index < excess or now - reserved_at > RESERVATION_SECONDS:
                del self._jobs[job_id]

    @contextmanager
    def job(self, job_id: str | None, ticket: Ticket) -> Iterator[Ticket]:
        """``ticket``, joined to job ``job_id`` (from `reserve_job`) so that `cancel` with
        its token stops it; on exit it joins the finished jobs. `UnknownJob` for an id
        this desk did not hand out, `JobConflict` for one already used (waiting, running or
        one of the last `MAX_RESERVATIONS` finished)."""
        if job_id is None:
            yield ticket
            return
        with self._state:
            job = self._jobs.get(job_id)
            if job_id in self._finished or (job is not None and job.started):
                raise JobConflict(f"job {job_id[:80]!r} is already used; ask for a new id")
            if job is None:
                raise UnknownJob(
                    f"job {job_id[:80]!r} is unknown; ask POST /api/jobs for a new id (or "
                    "send no job)"
                )
            job.started = True
            if job.ticket.stopped:  # cancelled before its request arrived
                ticket.stop(CANCELLED)
            job.ticket = ticket
        try:
            yield ticket
        finally:
            with self._state:
                finished = self._jobs.pop(job_id, None)
                if finished is not None:
                    self._finished[job_id] = finished.token
                    while len(self._finished) > MAX_RESERVATIONS:
                        self._finished.popitem(last=False)

    def cancel(self, job_id: str, token: str) -> bool:
        """Stop job ``job_id`` (waiting, running, or not yet sent) when ``token`` is its
        token; False when no such job is waiting or running, `CancelRefused` for a wrong
        token."""
        with self._state:  # held while stopping: the request may swap in its ticket
            job = self._jobs.get(job_id)
            if job is None:
                return False
            _check_token(job.token, token)
            job.ticket.stop(CANCELLED)
        return True

    def finished(self, job_id: str, token: str) -> bool:
        """Whether job ``job_id``'s request ended lately (answered or stopped; one of the
        last `MAX_RESERVATIONS`): a cancel that crossed its answer, or came after the
        client had gone. `CancelRefused` when ``token`` is not its token."""
        with self._state:
            known = self._finished.get(job_id)
        if known is None:
            return False
        _check_token(known, token)
        return True

    def running_jobs(self) -> list[str]:
        """Ids of the jobs whose request is now waiting or running."""
        with self._state:
            return sorted(job_id for job_id, job in self._jobs.items() if job.started)

    def admitted(self) -> int:
        """How many requests are in (waiting or running) now."""
        with self._state:
            return self._admitted

    def stop_all(self) -> None:
        """Shutdown: refuse new requests (`ServerClosing`) and stop every admitted one and
        every reserved job; each stops before its next forward pass."""
        with self._state:
            self._closing = True
            tickets = list(self._live.values()) + [job.ticket for job in self._jobs.values()]
        for ticket in tickets:
            ticket.stop(SHUTDOWN)

    def close(self) -> None:
        """`stop_all`, then stop both threads; work still queued is dropped unrun."""
        self.stop_all()
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._pixels.shutdown(wait=True, cancel_futures=True)


def _check_token(known: str, token: str) -> None:
    if not secrets.compare_digest(known.encode(), token.encode()):
        raise CancelRefused(
            "wrong or missing cancel token: send the 'token' that POST /api/jobs "
            "returned with this job id"
        )


def _unless_stopped(work: Callable[[], T], ticket: Ticket) -> T:
    if ticket.stopped:
        raise Interrupted("stopped before it started")
    return work()
