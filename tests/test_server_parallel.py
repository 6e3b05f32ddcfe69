"""The server's RequestQueue with parallel workers, in process on the tiny model: requests run
together on one parallel Session (visible in the engine's counters), the bound counts the jobs
waiting while every worker is busy, one job's cancel stops only it, and a conversation's next turn
finds its cells in the slot that answered the previous one."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

import ecso_edge
from ecso_edge import EcsoConfig
from ecso_edge.errors import CancelledError
from ecso_edge.server import EcsoJob, QueueFull, RequestQueue

from conftest import make_image


class Events:
    """Each job's events by id; `wait(n)` blocks until n jobs have ended."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ended: dict[str, tuple[str, Any]] = {}
        self.pieces: dict[str, list[str]] = {}

    def sink_for(self, job_id: str, hold: "threading.Event | None" = None,
                 started: "threading.Event | None" = None) -> Any:
        def sink(kind: str, value: object) -> None:
            if kind == "piece":
                self.pieces.setdefault(job_id, []).append(str(value))
                if started is not None:
                    started.set()
                if hold is not None:
                    hold.wait()  # keeps this request in flight (its lane is busy in the callback)
                return
            with self.cond:
                self.ended[job_id] = (kind, value)
                self.cond.notify_all()
        return sink

    def wait(self, n: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: len(self.ended) >= n)


def job(events: Events, name: str, image: np.ndarray, max_tokens: int = 8, stream: bool = False,
        **kw: Any) -> EcsoJob:
    rgb = np.ascontiguousarray(image)
    messages = [("user", [(rgb.tobytes(), rgb.shape[1], rgb.shape[0]), f"{name}: what is this?"])]
    return EcsoJob(messages, max_tokens, events.sink_for(name, **kw), {}, stream=stream, id=name)


def test_requests_run_together_and_the_bound_counts_waiting_jobs(tiny_model: ecso_edge.Model) -> None:
    events = Events()
    queue = RequestQueue(tiny_model, EcsoConfig(verdict_override=False), max_queue=1, parallel=2)
    try:
        assert queue.stats()["parallel"] == 2
        hold, started_a, started_b = threading.Event(), threading.Event(), threading.Event()
        # the safe path releases the held answer through the sink: each first piece blocks there,
        # and a request blocked in its sink leaves the others' rounds, so both get there
        queue.submit(job(events, "a", make_image(seed=1), stream=True, hold=hold, started=started_a))
        started_a.wait()  # taken by a worker: the queue is empty again
        queue.submit(job(events, "b", make_image(seed=2), stream=True, hold=hold, started=started_b))
        started_b.wait()
        assert queue.stats()["in_progress"] == 2
        queue.submit(job(events, "c", make_image(seed=3)))  # waits: both workers are busy
        try:
            queue.submit(job(events, "d", make_image(seed=4)))
            raise AssertionError("a second waiting job was accepted past max_queue=1")
        except QueueFull as e:
            assert e.queued == 1
        assert queue.stats()["engine"]["max_in_flight"] == 2
        hold.set()
        events.wait(3)
        assert {k: v[0] for k, v in events.ended.items()} == {"a": "done", "b": "done", "c": "done"}
        stats = queue.stats()
        assert stats["completed"] == 3 and stats["rejected"] == 1 and stats["in_progress"] == 0
        assert stats["engine"]["requests"] == 3
    finally:
        hold.set()
        queue.close()


def test_cancelling_one_running_job_stops_only_it(tiny_model: ecso_edge.Model) -> None:
    events = Events()
    queue = RequestQueue(tiny_model, EcsoConfig(verdict_override=False), max_queue=4, parallel=2)
    try:
        hold, started = threading.Event(), threading.Event()
        victim = job(events, "victim", make_image(seed=5), stream=True, hold=hold, started=started)
        queue.submit(victim)
        started.wait()
        other = job(events, "other", make_image(seed=6), max_tokens=12)
        queue.submit(other)
        queue.cancel(victim)
        hold.set()
        events.wait(2)
        # the victim was past its generation when cancelled (held in its sink): it may still end
        # done; what matters is that the other one is untouched
        assert events.ended["other"][0] == "done"
        assert events.ended["victim"][0] in ("done", "error")
        if events.ended["victim"][0] == "error":
            assert isinstance(events.ended["victim"][1], CancelledError)
    finally:
        hold.set()
        queue.close()


def test_a_follow_up_turn_finds_its_slot(tiny_model: ecso_edge.Model) -> None:
    events = Events()
    queue = RequestQueue(tiny_model, EcsoConfig(), max_queue=4, parallel=2)
    try:
        img = np.ascontiguousarray(make_image(seed=7))
        turn1 = [("user", [(img.tobytes(), img.shape[1], img.shape[0]), "Describe it."])]
        queue.submit(EcsoJob(turn1, 8, events.sink_for("t1"), {}, stream=False, id="t1"))
        events.wait(1)
        answer = events.ended["t1"][1].answer
        # another conversation in between, which may take the other slot or this one once free
        queue.submit(job(events, "x", make_image(seed=8)))
        events.wait(2)
        turn2 = turn1 + [("assistant", [answer]), ("user", ["And the colours?"])]
        queue.submit(EcsoJob(turn2, 8, events.sink_for("t2"), {}, stream=False, id="t2"))
        events.wait(3)
        r = events.ended["t2"][1]
        assert r.stats["image_encodes"] == 0
        assert r.stats["steps"]["answer"]["tokens_reused"] > r.stats["image_tokens"]
    finally:
        queue.close()
