"""Load on `ecso-edge serve`: 50 concurrent clients for a bounded time against a small queue.
Every request gets a 200 or a 503 (with Retry-After), each 200 answers its own request (its query
comes back in `ecso.query`, its id is unique), the server's counters match what the clients saw
(nothing answered twice, nothing lost) and the server stays up."""

from __future__ import annotations

import importlib.util
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

import httpx
import pytest

import ecso_edge
from ecso_edge import Session
from serve_helpers import ServerProcess

REPO = Path(__file__).resolve().parent.parent


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("serve_load", REPO / "bench" / "serve_load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess("--max-queue", "4", log_dir=tmp_path_factory.mktemp("load-server"))
    yield server
    assert server.stop() in (0, -signal.SIGTERM), server.log()  # uvicorn re-raises SIGTERM
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.slow
def test_fifty_concurrent_clients(server: ServerProcess, tiny_model: ecso_edge.Model) -> None:
    bench = load_bench()
    report = bench.run_load(server.url, clients=50, seconds=10.0, max_tokens=8)
    outcomes = report.outcomes
    statuses = {o.status for o in outcomes}
    assert statuses <= {200, 503}, [o for o in outcomes if o.status not in (200, 503)][:3]
    ok, busy = report.of(200), report.of(503)
    assert ok and busy  # 50 clients against a queue of 4: both must happen
    for o in busy:
        assert int(o.retry_after) >= 1 and o.body["error"]["code"] == "queue_full"
    for o in ok:
        assert o.body["ecso"]["query"] == o.query
        choice, usage = o.body["choices"][0], o.body["usage"]
        assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
        assert choice["finish_reason"] == ("length" if usage["completion_tokens"] == 8 else "stop"), o.body
    # the answers are the ones a session gives for the same request (greedy: one answer per query)
    session, image = Session(tiny_model), bench.png_data_uri()
    for o in ok[:3]:
        expected = session.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                              {"type": "text", "text": o.query}]}], max_tokens=8)
        assert o.body["choices"][0]["message"]["content"] == expected.answer, o.query
    ids = [o.body["id"] for o in ok]
    assert len(set(ids)) == len(ids)
    queries = [o.query for o in outcomes]
    assert len(set(queries)) == len(queries)  # every request was sent once
    assert server.alive()
    health = httpx.get(server.url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["queued"] == 0 and health["running"] is False
    assert health["completed"] == health["accepted"] == len(ok)
    assert health["rejected"] == len(busy)
    assert health["failed"] == health["cancelled"] == health["dropped"] == 0
