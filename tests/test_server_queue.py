"""The server's RequestQueue in process, on the tiny model: jobs run one at a time in submission
order, the bound counts waiting jobs only, a queued job cancelled is dropped without running, and
per-request sampling never leaks into the next job."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import ecso_edge
from ecso_edge import EcsoConfig, Session
from ecso_edge.server import EcsoJob, QueueFull, RequestQueue

QUERY = "What is in this picture?"


class Recorder:
    """Collects each job's events; `finished` lists job ids in the order they ended."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.finished: list[str] = []
        self.results: dict[str, Any] = {}
        self.done = threading.Event()
        self.expected = 0

    def sink_for(self, job_id: str) -> Any:
        def sink(kind: str, value: object) -> None:
            if kind in ("done", "error"):
                with self.lock:
                    self.finished.append(job_id)
                    self.results[job_id] = (kind, value)
                    if len(self.finished) == self.expected:
                        self.done.set()
        return sink


def make_job(rec: Recorder, name: str, image: np.ndarray, max_tokens: int = 6, **sampling: Any) -> EcsoJob:
    rgb = np.ascontiguousarray(image)
    messages = [("user", [(rgb.tobytes(), rgb.shape[1], rgb.shape[0]), f"{name}: {QUERY}"])]
    job = EcsoJob(messages, max_tokens, rec.sink_for(name), dict(sampling), id=name)
    return job


def test_jobs_run_in_order_and_the_bound_counts_waiting_jobs(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    rec = Recorder()
    long = EcsoConfig(verdict_override=True, ignore_eos=True, max_tokens_answer=4, max_tokens_caption=4)
    queue = RequestQueue(tiny_model, long, max_queue=3)
    try:
        rec.expected = 4
        first = make_job(rec, "job0", image, max_tokens=1500)  # long enough to keep the others waiting
        queue.submit(first)
        while not queue.stats()["running"]:  # the worker has taken it: the queue is empty again
            threading.Event().wait(0.01)
        jobs = [make_job(rec, f"job{i}", image) for i in range(1, 4)]
        for job in jobs:
            queue.submit(job)
        with pytest.raises(QueueFull) as full:
            queue.submit(make_job(rec, "job4", image))
        assert full.value.retry_after_s >= 1 and full.value.queued == 3
        assert rec.done.wait(120), rec.finished
        assert rec.finished == ["job0", "job1", "job2", "job3"]
        assert all(kind == "done" for kind, _ in rec.results.values())
        stats = queue.stats()
        assert (stats["accepted"], stats["completed"], stats["rejected"]) == (4, 4, 1)
        assert stats["queued"] == 0 and stats["running"] is False
    finally:
        queue.close()


def test_cancelled_queued_job_is_dropped_and_sampling_does_not_leak(tiny_model: ecso_edge.Model,
                                                                    image: np.ndarray) -> None:
    rec = Recorder()
    base = EcsoConfig(ignore_eos=True)
    queue = RequestQueue(tiny_model, base, max_queue=4)
    try:
        rec.expected = 4
        queue.submit(make_job(rec, "blocker", image, max_tokens=1500))  # keeps the others waiting
        while not queue.stats()["running"]:
            threading.Event().wait(0.01)
        sampled = make_job(rec, "sampled", image, temperature=0.9, seed=3)
        dropped = make_job(rec, "dropped", image)
        greedy = make_job(rec, "greedy", image)
        after = make_job(rec, "after", image)
        for job in (sampled, dropped, greedy, after):
            queue.submit(job)
        queue.cancel(dropped)
        assert queue.stats()["running"], "the blocker ended too soon for this test to mean anything"
        assert rec.done.wait(120), rec.finished
        assert rec.finished == ["blocker", "sampled", "greedy", "after"]
        assert dropped.state == "dropped" and queue.stats()["dropped"] == 1
        expect_sampled = Session(tiny_model, base.replace(temperature=0.9, seed=3))._core.chat(
            sampled.messages, max_tokens=6)
        assert rec.results["sampled"][1].answer == expect_sampled.answer
        for name, job in (("greedy", greedy), ("after", after)):
            expected = Session(tiny_model, base)._core.chat(job.messages, max_tokens=6)
            assert rec.results[name][1].answer == expected.answer
    finally:
        queue.close()
