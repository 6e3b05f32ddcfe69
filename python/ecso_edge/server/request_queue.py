"""The server's one model, served in order: a bounded FIFO of ECSO jobs and the `parallel` worker
threads that run them on one Session (with parallel > 1 their requests decode together, one batch
per step). A full queue is refused at once (the caller answers 503 with Retry-After); a job
cancelled while queued is dropped before it starts; a job cancelled while running stops its own
generation through its own `CancelToken`, and nobody else's (also when the cancel lands between a
worker taking the job and the C++ call starting)."""

from __future__ import annotations

import collections
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .._core import EcsoConfig, EcsoResult
from ..errors import CancelledError
from ..messages import CoreMessage
from ..model import Model, TextModel
from ..session import CancelToken, Session

__all__ = ["QueueFull", "EcsoJob", "RequestQueue"]

# (kind, value): ("piece", str) for each piece of the decided answer, then exactly one of
# ("done", EcsoResult) or ("error", BaseException). Called on the worker thread.
EventSink = Callable[[str, object], None]


class QueueFull(Exception):
    """The queue holds `max_queue` waiting jobs; retry after `retry_after_s` seconds."""

    def __init__(self, queued: int, retry_after_s: int) -> None:
        super().__init__(f"the server is busy ({queued} requests waiting); retry after {retry_after_s} s")
        self.queued = queued
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class EcsoJob:
    """One ECSO request: the conversation as the core takes it (images decoded), and where its
    events go."""

    messages: list[CoreMessage]
    max_tokens: int
    sink: EventSink
    sampling: dict[str, Any] = field(default_factory=dict)  # EcsoConfig fields set by this request
    stream: bool = True  # False: no "piece" events, only the final one
    id: str = field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex)
    state: str = "new"  # new -> queued -> running -> done, or queued -> dropped
    cancel_token: CancelToken = field(default_factory=CancelToken)
    submitted_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def queue_seconds(self) -> float:
        return max(0.0, (self.started_at or self.finished_at) - self.submitted_at)

    @property
    def run_seconds(self) -> float:
        return max(0.0, self.finished_at - self.started_at) if self.started_at else 0.0


class RequestQueue:
    """Runs `EcsoJob`s in submission order on `parallel` worker threads sharing one Session.

    `max_queue` bounds the jobs WAITING while every worker is busy. Sampling fields a job sets
    (temperature, top_p, seed) apply to that call alone (the session's conversation cache is
    shared by every request, whatever its sampling). A follow-up turn of a conversation runs on
    the session's slot that holds its earlier turn, when that slot is free. `state`: the session's
    state file (Session's state=), loaded here; the server's StateSaver writes it."""

    def __init__(self, model: Model, config: EcsoConfig, max_queue: int, parallel: int = 1,
                 judge_model: Optional[TextModel] = None, judge_format: Optional[str] = None,
                 state: Optional[str] = None) -> None:
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self._base_config = config
        self.max_queue = max_queue
        self._lock = threading.Condition()
        self._waiting: collections.deque[EcsoJob] = collections.deque()
        self._running: set[EcsoJob] = set()
        self._session = Session(model, config, parallel=parallel, judge_model=judge_model, judge_format=judge_format,
                                state=state)
        self.parallel = self._session.parallel
        self._closing = False
        self._mean_run_s: Optional[float] = None
        self.counters = {"accepted": 0, "rejected": 0, "completed": 0, "failed": 0, "cancelled": 0, "dropped": 0}
        self._workers = [threading.Thread(target=self._work, name=f"ecso-server-worker-{i}", daemon=True)
                         for i in range(self.parallel)]
        for worker in self._workers:
            worker.start()

    @property
    def session(self) -> Session:
        return self._session

    # -- called from request handlers -------------------------------------------------------
    def submit(self, job: EcsoJob) -> None:
        """Queue `job`, or raise `QueueFull` at once."""
        with self._lock:
            if self._closing:
                raise QueueFull(len(self._waiting), 1)
            busy = len(self._running) >= self.parallel or bool(self._waiting)
            if busy and len(self._waiting) >= self.max_queue:
                self.counters["rejected"] += 1
                raise QueueFull(len(self._waiting), self._retry_after(len(self._waiting)))
            job.state = "queued"
            job.submitted_at = time.perf_counter()
            self._waiting.append(job)
            self.counters["accepted"] += 1
            self._lock.notify_all()

    def cancel(self, job: EcsoJob) -> None:
        """Stop `job`: dropped if still waiting, its generation cancelled if running, else nothing.
        Safe to call repeatedly and from any thread; it never touches another job."""
        job.cancel_token.cancel()  # the job's own: a run that has not begun yet stops at its start
        with self._lock:
            if job.state == "queued":
                self._waiting.remove(job)
                job.state = "dropped"
                job.finished_at = time.perf_counter()
                self.counters["dropped"] += 1

    def finished(self) -> int:
        """The jobs that ran to an end, whatever their outcome: each may have changed what the
        session keeps (the state saver saves when this grows)."""
        with self._lock:
            return self.counters["completed"] + self.counters["failed"] + self.counters["cancelled"]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self.counters,
                "queued": len(self._waiting),
                "running": bool(self._running),
                "in_progress": len(self._running),
                "engine": self._session.engine_stats(),
                "parallel": self.parallel,
                "judge_model": self._session.judged_by,
                "max_queue": self.max_queue,
                "mean_run_s": self._mean_run_s,
            }

    def close(self) -> None:
        """Drop the waiting jobs, cancel the running one and stop the worker."""
        with self._lock:
            self._closing = True
            waiting = list(self._waiting)
        for job in waiting:
            self.cancel(job)
            _emit(job, "error", CancelledError("the server is shutting down"))
        with self._lock:
            running = list(self._running)
            self._lock.notify_all()
        for job in running:
            self.cancel(job)
        for worker in self._workers:
            worker.join(timeout=30)

    # -- the worker ---------------------------------------------------------------------------
    def _retry_after(self, waiting: int) -> int:
        per_job = self._mean_run_s if self._mean_run_s is not None else 1.0
        return max(1, min(3600, math.ceil(per_job * (waiting + 1) / self.parallel)))

    def _next_job(self) -> Optional[EcsoJob]:
        with self._lock:
            while not self._waiting and not self._closing:
                self._lock.wait()
            if self._closing:
                return None
            job = self._waiting.popleft()
            job.state = "running"
            job.started_at = time.perf_counter()
            self._running.add(job)
            self._lock.notify_all()  # stats() watchers: a job started
            return job

    def _work(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            kind: str
            value: object
            try:
                sampling = self._base_config.replace(**job.sampling) if job.sampling else None

                def on_token(piece: str, job: EcsoJob = job) -> None:
                    _emit(job, "piece", piece)

                result: EcsoResult = self._session._core.chat(job.messages, max_tokens=job.max_tokens,
                                                              on_text=on_token if job.stream else None,
                                                              cancel=job.cancel_token, sampling_from=sampling)
                kind, value = "done", result
            except BaseException as e:  # the worker must outlive any one request
                kind, value = "error", e
            with self._lock:
                job.finished_at = time.perf_counter()
                job.state = "done"
                self._running.discard(job)
                if kind == "done":
                    self.counters["completed"] += 1
                    run_s = job.run_seconds
                    self._mean_run_s = run_s if self._mean_run_s is None else 0.8 * self._mean_run_s + 0.2 * run_s
                elif isinstance(value, CancelledError):
                    self.counters["cancelled"] += 1
                else:
                    self.counters["failed"] += 1
            _emit(job, kind, value)


def _emit(job: EcsoJob, kind: str, value: object) -> None:
    try:
        job.sink(kind, value)
    except Exception:
        # The receiving side is gone (its event loop closed); the job still ends cleanly here.
        pass
