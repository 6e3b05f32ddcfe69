"""`ecso-edge serve` driven by the official `openai` client and by plain HTTP: answers equal to the
in-process Session's, streaming, the `ecso` object, errors (bad image, size limit, auth, text-only,
refused URLs), sampling per request, the bounded queue (503 + Retry-After), and client
disconnects cancelling their own generation (running) or dropping it (queued)."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import openai
import pytest

import ecso_edge
from ecso_edge import EcsoConfig, Session
from ecso_edge.images import load_rgb
from serve_helpers import ServerProcess, chat_body, data_uri, png_bytes

QUERY = "What is in this picture?"
MAX_TOKENS = 12
KEY = "s3cret-test-key"
# The long server: the answer and caption steps are cut to 4 tokens, the judge is skipped by the
# forced verdict, and step 4 runs to its token limit (ignore_eos), so a request stays in step 4,
# streaming, for as long as a test needs it to.
LONG_CONFIG = json.dumps({"verdict_override": True, "ignore_eos": True, "max_tokens_answer": 4,
                          "max_tokens_caption": 4})
LONG_TOKENS = 6000
LONG_CTX = 8192


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


def _server(logs: Path, *args: str, n_ctx: int = 2048) -> Iterator[ServerProcess]:
    server = ServerProcess(*args, log_dir=logs, n_ctx=n_ctx)
    try:
        yield server
    finally:
        assert server.alive(), server.log()
        assert server.stop() in (0, -signal.SIGTERM), server.log()  # uvicorn re-raises SIGTERM after shutdown
        assert "Traceback" not in server.log(), server.log()


@pytest.fixture(scope="module")
def server(logs: Path) -> Iterator[ServerProcess]:
    yield from _server(logs, "--max-request-mb", "1", "--max-tokens", str(MAX_TOKENS), "--alias", "tiny-llava")


@pytest.fixture(scope="module")
def unsafe_server(logs: Path) -> Iterator[ServerProcess]:
    yield from _server(logs, "--config", json.dumps({"verdict_override": True}))


@pytest.fixture(scope="module")
def keyed_server(logs: Path) -> Iterator[ServerProcess]:
    yield from _server(logs, "--api-key", KEY)


@pytest.fixture(scope="module")
def long_server(logs: Path) -> Iterator[ServerProcess]:
    yield from _server(logs, "--config", LONG_CONFIG, "--max-queue", "1", n_ctx=LONG_CTX)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    from conftest import make_image

    return make_image()


@pytest.fixture(scope="module")
def image_uri(pixels: np.ndarray) -> str:
    return data_uri(png_bytes(pixels))


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True, scope="module")
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(server: ServerProcess, key: str = "unused") -> openai.OpenAI:
    # max_retries=0: the client would otherwise retry 503s and 5xx on its own
    c = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)
    _clients.append(c)
    return c


def messages(image_url: str, query: str = QUERY) -> Any:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_url}},
        {"type": "text", "text": query},
    ]}]


def health(server: ServerProcess) -> dict[str, Any]:
    return httpx.get(server.url + "/health", timeout=10).json()  # type: ignore[no-any-return]


def wait_for(server: ServerProcess, condition: Any, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        h = health(server)
        if condition(h):
            return h
        assert time.monotonic() < deadline, f"server state never matched: {h}"
        time.sleep(0.05)


# -- answers ---------------------------------------------------------------------------------

def test_plain_completion_is_the_sessions_answer(server: ServerProcess, tiny_model: ecso_edge.Model,
                                                 pixels: np.ndarray, image_uri: str) -> None:
    expected = Session(tiny_model).run(pixels, QUERY, max_tokens=MAX_TOKENS)
    c = client(server).chat.completions.create(model="tiny-llava", messages=messages(image_uri))
    assert c.object == "chat.completion" and c.id.startswith("chatcmpl-")
    assert c.model == "tiny-llava"
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == expected.answer
    # the safe path: the user gets step 1's answer (the judge's tokens are not the completion)
    assert not expected.unsafe and expected.steps[0].name == "answer"
    assert c.choices[0].finish_reason == ("stop" if expected.steps[0].stop_reason == "eos" else "length")
    assert c.usage is not None and c.usage.completion_tokens == len(expected.steps[0].tokens)
    assert c.usage.prompt_tokens == expected.steps[0].stats["prompt_tokens"]
    ecso = (c.model_extra or {})["ecso"]
    assert ecso["unsafe"] is expected.unsafe
    assert ecso["verdict_text"] == expected.verdict_text
    assert ecso["caption"] == expected.caption
    assert ecso["query"] == QUERY
    assert ecso["stats"]["image_encodes"] == 1
    assert ecso["stats"]["tokens_reused"] == expected.stats["tokens_reused"]
    assert ecso["timings"]["run_s"] > 0
    assert "first_answer" not in ecso  # only on request


def test_first_answer_on_request_and_the_unsafe_path(unsafe_server: ServerProcess, tiny_model: ecso_edge.Model,
                                                     pixels: np.ndarray, image_uri: str) -> None:
    expected = Session(tiny_model, EcsoConfig(verdict_override=True)).run(pixels, QUERY, max_tokens=16)
    c = client(unsafe_server).chat.completions.create(
        model="x", messages=messages(image_uri), max_tokens=16, extra_body={"ecso": {"first_answer": True}}
    )
    ecso = (c.model_extra or {})["ecso"]
    assert c.choices[0].message.content == expected.answer != expected.initial_answer
    assert ecso["unsafe"] is True and ecso["verdict_forced"] is True
    assert ecso["first_answer"] == expected.initial_answer
    assert expected.steps[3].name == "text_only"
    assert c.usage is not None and c.usage.completion_tokens == len(expected.steps[3].tokens)
    assert c.choices[0].finish_reason == ("stop" if expected.steps[3].stop_reason == "eos" else "length")
    assert ecso["caption"] == expected.caption and ecso["caption"]


@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_streamed_chunks_join_to_the_answer(server: ServerProcess, unsafe_server: ServerProcess,
                                            tiny_model: ecso_edge.Model, pixels: np.ndarray, image_uri: str,
                                            unsafe: bool) -> None:
    expected = Session(tiny_model, EcsoConfig(verdict_override=unsafe if unsafe else None)).run(
        pixels, QUERY, max_tokens=16)
    chunks = list(client(unsafe_server if unsafe else server).chat.completions.create(
        model="x", messages=messages(image_uri), max_tokens=16, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert text == expected.answer
    assert sum(1 for ch in chunks if ch.choices[0].delta.content) > 1
    assert [ch.choices[0].finish_reason for ch in chunks][-1] in ("stop", "length")
    assert all(ch.choices[0].finish_reason is None for ch in chunks[:-1])
    ecso = (chunks[-1].model_extra or {})["ecso"]
    assert ecso["unsafe"] is unsafe and ecso["query"] == QUERY


def test_temperature_and_seed_per_request(server: ServerProcess, tiny_model: ecso_edge.Model,
                                          pixels: np.ndarray, image_uri: str) -> None:
    sampled = Session(tiny_model, EcsoConfig(temperature=0.9, seed=7)).run(pixels, QUERY, max_tokens=MAX_TOKENS)
    greedy = Session(tiny_model).run(pixels, QUERY, max_tokens=MAX_TOKENS)
    c = client(server)
    for _ in range(2):
        r = c.chat.completions.create(model="x", messages=messages(image_uri), temperature=0.9, seed=7)
        assert r.choices[0].message.content == sampled.answer
    # and back to greedy: the sampling of one request does not stick to the next
    r = c.chat.completions.create(model="x", messages=messages(image_uri))
    assert r.choices[0].message.content == greedy.answer


def test_models_and_health(server: ServerProcess) -> None:
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["tiny-llava"]
    h = health(server)
    assert h["status"] == "ok" and h["model"] == "tiny-llava" and h["max_queue"] == 8


# -- refusals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"this is not an image", png_bytes(np.zeros((8, 8, 3), np.uint8))[:40]],
                         ids=["not-an-image", "truncated-png"])
def test_bad_image_is_400_with_the_runtimes_message(server: ServerProcess, data: bytes) -> None:
    with pytest.raises(ecso_edge.ImageError) as runtime:
        load_rgb(data, max_pixels=EcsoConfig().max_image_pixels)
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model="x", messages=messages(data_uri(data)))
    assert e.value.status_code == 400
    assert str(runtime.value) in e.value.message
    assert e.value.code == "invalid_image"


def test_request_over_the_size_limit_is_413(server: ServerProcess) -> None:
    noise = np.random.default_rng(1).integers(0, 256, size=(700, 700, 3), dtype=np.uint8)
    big = png_bytes(noise)
    assert len(big) > 1024 * 1024
    with pytest.raises(openai.APIStatusError) as e:
        client(server).chat.completions.create(model="x", messages=messages(data_uri(big)))
    assert e.value.status_code == 413
    assert "limit" in e.value.message
    assert health(server)["status"] == "ok"


def test_wrong_or_missing_key_is_401(keyed_server: ServerProcess, image_uri: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(keyed_server, "wrong-key").chat.completions.create(model="x", messages=messages(image_uri))
    with pytest.raises(openai.AuthenticationError):
        client(keyed_server, "wrong-key").models.list()
    r = httpx.post(keyed_server.url + "/v1/chat/completions", json=chat_body(image_uri, QUERY), timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    ok = client(keyed_server, KEY).chat.completions.create(model="x", messages=messages(image_uri), max_tokens=4)
    assert ok.choices[0].message.content is not None
    assert health(keyed_server)["completed"] == 1  # /health stays open for monitoring


@pytest.mark.parametrize(
    "url, match",
    [
        ("http://127.0.0.1:9/cat.png", "remote image URLs are refused"),
        ("file:///etc/hostname", "local file paths"),
        ("/etc/hostname", "local file paths"),
        ("data:image/png;base64,@@@@", "not valid base64"),
    ],
    ids=["remote", "file-url", "path", "bad-base64"],
)
def test_refused_image_urls(server: ServerProcess, url: str, match: str) -> None:
    with pytest.raises(openai.BadRequestError, match=match):
        client(server).chat.completions.create(model="x", messages=messages(url))


def test_text_only_and_malformed_requests_are_400(server: ServerProcess, image_uri: str) -> None:
    c = client(server)
    with pytest.raises(openai.BadRequestError, match="ECSO needs an image"):
        c.chat.completions.create(model="x", messages=[{"role": "user", "content": "hello"}])
    with pytest.raises(openai.BadRequestError, match="exactly one"):
        two = messages(image_uri)
        two[0]["content"].append({"type": "image_url", "image_url": {"url": image_uri}})
        c.chat.completions.create(model="x", messages=two)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.chat.completions.create(model="x", messages=messages(image_uri), max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="n=1"):
        c.chat.completions.create(model="x", messages=messages(image_uri), n=2)
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_prompt_over_the_context_is_400_even_when_streamed(server: ServerProcess, image_uri: str,
                                                           stream: bool) -> None:
    # nothing is sent before the first event, so a streamed request still gets its own status
    long_query = "describe " * 3000
    r = httpx.post(server.url + "/v1/chat/completions", json=chat_body(image_uri, long_query, stream=stream),
                   timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert health(server)["status"] == "ok"


def test_remote_images_only_when_allowed(logs: Path, pixels: np.ndarray, tmp_path: Path,
                                         tiny_model: ecso_edge.Model) -> None:
    import functools
    import http.server
    import threading

    (tmp_path / "cat.png").write_bytes(png_bytes(pixels))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as images:
        threading.Thread(target=images.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{images.server_address[1]}"
        for server in _server(logs, "--allow-remote-images"):
            c = client(server)
            r = c.chat.completions.create(model="x", messages=messages(base + "/cat.png"), max_tokens=8)
            assert r.choices[0].message.content == Session(tiny_model).run(pixels, QUERY, max_tokens=8).answer
            with pytest.raises(openai.BadRequestError, match="HTTP 404"):
                c.chat.completions.create(model="x", messages=messages(base + "/missing.png"), max_tokens=8)
            with pytest.raises(openai.BadRequestError, match="local file paths"):
                c.chat.completions.create(model="x", messages=messages("file:///etc/hostname"), max_tokens=8)
        images.shutdown()


# -- queue and disconnects ----------------------------------------------------------------------

def _raw_request(server: ServerProcess, body: dict[str, Any]) -> socket.socket:
    """A request on a raw socket, so the test decides exactly when the client goes away."""
    payload = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return s


def test_full_queue_503_and_disconnects_cancel_or_drop_only_their_request(
        long_server: ServerProcess, image_uri: str) -> None:
    before = health(long_server)
    long_body = chat_body(image_uri, QUERY, max_tokens=LONG_TOKENS, stream=True)
    with httpx.stream("POST", long_server.url + "/v1/chat/completions", json=long_body, timeout=120) as running:
        assert running.status_code == 200
        # the first chunk comes once step 4 is streaming: the request is running. (The line
        # iterator is kept: closing it would close the connection, i.e. disconnect.)
        lines = running.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                break
        queued = _raw_request(long_server, chat_body(image_uri, "queued " + QUERY, max_tokens=LONG_TOKENS))
        wait_for(long_server, lambda h: h["queued"] == 1)
        # the queue (max 1) is full: a third request is refused at once, with a hint when to retry
        busy = httpx.post(long_server.url + "/v1/chat/completions", json=chat_body(image_uri, QUERY), timeout=30)
        assert busy.status_code == 503
        assert int(busy.headers["retry-after"]) >= 1
        assert busy.json()["error"]["code"] == "queue_full"
        # the queued client goes away: its request is dropped before it starts
        queued.close()
        h = wait_for(long_server, lambda h: h["dropped"] == before["dropped"] + 1)
        assert h["queued"] == 0 and h["running"] is True
    # the streaming client went away: its generation is cancelled
    h = wait_for(long_server, lambda h: not h["running"])
    assert h["cancelled"] == before["cancelled"] + 1
    assert h["completed"] == before["completed"] and h["failed"] == before["failed"]
    assert h["rejected"] == before["rejected"] + 1
    # the server serves the next request normally
    ok = httpx.post(long_server.url + "/v1/chat/completions", json=chat_body(image_uri, QUERY, max_tokens=4),
                    timeout=60)
    assert ok.status_code == 200 and ok.json()["ecso"]["unsafe"] is True


def test_non_streaming_client_that_disconnects_cancels_its_generation(
        long_server: ServerProcess, image_uri: str) -> None:
    before = health(long_server)
    s = _raw_request(long_server, chat_body(image_uri, QUERY, max_tokens=LONG_TOKENS))
    wait_for(long_server, lambda h: h["running"])
    s.close()
    h = wait_for(long_server, lambda h: not h["running"] and h["cancelled"] == before["cancelled"] + 1)
    assert h["completed"] == before["completed"] and h["failed"] == before["failed"]
