"""`ecso-edge serve` driven by the official `openai` client and by plain HTTP: answers equal to the
in-process Session's, streaming, the `ecso` object, errors (bad image, size limit, auth, text-only,
refused URLs), sampling per request, the bounded queue (503 + Retry-After), and client
disconnects cancelling their own generation (running) or dropping it (queued). Hostile bodies
(deep nesting, numbers out of range, NaN, odd encodings) are 400 with OpenAI's error shape, and a
500 shows no internal detail."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import openai
import pytest

import ecso_edge
from ecso_edge import EcsoConfig, Session
from ecso_edge.images import load_rgb
from serve_helpers import ServerProcess, chat_body, data_uri, health, png_bytes, wait_for

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
def parallel_long_server(logs: Path) -> Iterator[ServerProcess]:
    yield from _server(logs, "--config", LONG_CONFIG, "--parallel", "2", n_ctx=LONG_CTX)


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


# -- answers ---------------------------------------------------------------------------------

def test_plain_completion_is_the_sessions_answer(server: ServerProcess, tiny_model: ecso_edge.Model,
                                                 pixels: np.ndarray, image_uri: str) -> None:
    expected = Session(tiny_model).chat(messages(image_uri), max_tokens=MAX_TOKENS)
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
    expected = Session(tiny_model, EcsoConfig(verdict_override=True)).chat(messages(image_uri), max_tokens=16)
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
    expected = Session(tiny_model, EcsoConfig(verdict_override=unsafe if unsafe else None)).chat(
        messages(image_uri), max_tokens=16)
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
    sampled = Session(tiny_model, EcsoConfig(temperature=0.9, seed=7)).chat(messages(image_uri), max_tokens=MAX_TOKENS)
    greedy = Session(tiny_model).chat(messages(image_uri), max_tokens=MAX_TOKENS)
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


def test_wrong_or_missing_key_is_401(keyed_server: ServerProcess, image_uri: str,
                                     tiny_model: ecso_edge.Model) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(keyed_server, "wrong-key").chat.completions.create(model="x", messages=messages(image_uri))
    with pytest.raises(openai.AuthenticationError):
        client(keyed_server, "wrong-key").models.list()
    r = httpx.post(keyed_server.url + "/v1/chat/completions", json=chat_body(image_uri, QUERY), timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    ok = client(keyed_server, KEY).chat.completions.create(model="x", messages=messages(image_uri), max_tokens=4)
    assert ok.choices[0].message.content == Session(tiny_model).chat(messages(image_uri), max_tokens=4).answer
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


def test_malformed_requests_are_400(server: ServerProcess, image_uri: str) -> None:
    c = client(server)
    for bad, match in (
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "last message"),
        ([{"role": "tool", "content": "42", "tool_call_id": "x"}], "tools are not supported"),
        ([{"role": "assistant", "content": None}, {"role": "user", "content": "hi"}], "missing or null"),
        ([{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": image_uri}}]},
          {"role": "user", "content": "hi"}], "images go in user messages"),
        ([{"role": "user", "content": [{"type": "text", "text": "  "}]}], "last user message is empty"),
    ):
        with pytest.raises(openai.BadRequestError, match=match):
            c.chat.completions.create(model="x", messages=bad)
    two = messages(image_uri)
    two[0]["content"].insert(1, {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}})
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]\.content\[1\]: the image data URI"):
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
            assert r.choices[0].message.content == Session(tiny_model).chat(
                messages(data_uri(png_bytes(pixels))), max_tokens=8).answer
            with pytest.raises(openai.BadRequestError, match="HTTP 404"):
                c.chat.completions.create(model="x", messages=messages(base + "/missing.png"), max_tokens=8)
            with pytest.raises(openai.BadRequestError, match="local file paths"):
                c.chat.completions.create(model="x", messages=messages("file:///etc/hostname"), max_tokens=8)
        images.shutdown()


def assert_openai_error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    for leak in ("Traceback", "incompatible function arguments", "_core", "RecursionError", "sys.set_int_max"):
        assert leak not in error["message"]
    return error  # type: ignore[no-any-return]


def _post_raw(server: ServerProcess, content: bytes) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", content=content,
                      headers={"Content-Type": "application/json"}, timeout=60)


def _with_field(image_uri: str, field: str, raw_value: str) -> bytes:
    """A valid chat body plus `"field": <raw_value>`, the value written as raw JSON text."""
    body = json.dumps(chat_body(image_uri, QUERY, **({} if "max" in field else {"max_tokens": 2})))
    return (body[:-1] + f', "{field}": {raw_value}}}').encode()


@pytest.mark.parametrize("content", [
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"[" * 50_000 + b"]" * 50_000,
    b"[" * 50_000,  # never closed
    b'{"model": "x", "messages": [{"role": "user", "content": ' + b"[" * 50_000 + b"]" * 50_000 + b"}]}",
    b'{"model": "x", "messages": ' + b'[{"content": ' * 30_000 + b"1" + b"}]" * 30_000 + b"}",
    b"[" * 65 + b"]" * 65,  # one level over the limit
], ids=["objects", "arrays", "unclosed", "in-content", "in-messages", "depth-65"])
def test_deeply_nested_bodies_are_400_not_500(server: ServerProcess, content: bytes) -> None:
    error = assert_openai_error(_post_raw(server, content))
    assert "deeper than 64 levels" in error["message"]
    assert health(server)["status"] == "ok"


def test_nesting_up_to_the_limit_is_parsed(server: ServerProcess, image_uri: str) -> None:
    # 64 levels in an ignored field (the body itself is level 1): parsed, then the request runs
    deep = "[" * 63 + "]" * 63
    r = _post_raw(server, _with_field(image_uri, "metadata", deep))
    assert r.status_code == 200, r.text
    # brackets inside strings are text, not structure
    r = _post_raw(server, json.dumps(chat_body(image_uri, "[{" * 300 + " what is this?", max_tokens=2)).encode())
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field, raw, match", [
    ("max_tokens", "1000000000000", "'max_tokens' must be an integer from 1 to 2147483647"),
    ("max_tokens", "2147483648", "from 1 to 2147483647"),
    ("max_tokens", "0", "from 1 to 2147483647"),
    ("max_tokens", "-1", "from 1 to 2147483647"),
    ("max_tokens", "true", "'max_tokens' must be an integer"),
    ("max_tokens", "2.5", "'max_tokens' must be an integer"),
    ("max_tokens", "4.0", "'max_tokens' must be an integer"),
    ("max_tokens", '"12"', "'max_tokens' must be an integer"),
    ("max_tokens", "[12]", "'max_tokens' must be an integer"),
    ("max_tokens", "1" + "0" * 200, "got <an integer of 201 digits>"),
    ("max_tokens", "NaN", "'max_tokens' must be an integer from 1 to 2147483647, got nan"),
    ("max_completion_tokens", "2147483648", "'max_completion_tokens' must be an integer from 1 to 2147483647"),
    ("max_completion_tokens", "false", "'max_completion_tokens' must be an integer"),
    ("temperature", "NaN", "'temperature' must be a number from 0 to 2, got nan"),  # Python's json reads NaN
    ("temperature", "Infinity", "got inf"),
    ("temperature", "-Infinity", "got -inf"),
    ("temperature", "1e400", "got inf"),
    ("temperature", "-0.5", "'temperature' must be a number from 0 to 2"),
    ("temperature", "1000000000000", "'temperature' must be a number from 0 to 2"),
    ("temperature", "true", "'temperature' must be a number"),
    ("temperature", '"hot"', "'temperature' must be a number"),
    ("top_p", "0", "'top_p' must be greater than 0"),
    ("top_p", "1.5", "'top_p' must be a number from 0 to 1"),
    ("top_p", "NaN", "'top_p' must be a number from 0 to 1, got nan"),
    ("seed", "-" + "9" * 120, "'seed' must be an integer from 0 to 4294967295, got <an integer of 120 digits>"),
    ("seed", "4294967296", "'seed' must be an integer from 0 to 4294967295"),
    ("seed", "-1", "'seed' must be an integer from 0 to 4294967295"),
    ("seed", "0.5", "'seed' must be an integer"),
    ("seed", "true", "'seed' must be an integer"),
    ("n", "2", "only n=1"),
    ("n", "true", "'n' must be an integer"),
    ("n", "1.0", "'n' must be an integer"),
    ("n", "0", "'n' must be an integer from 1"),
    ("presence_penalty", "0.5", "'presence_penalty' is not supported"),
    ("frequency_penalty", "Infinity", "'frequency_penalty' must be a number from -2 to 2, got inf"),
    ("frequency_penalty", '"x"', "'frequency_penalty' must be a number"),
    ("logit_bias", '{"5": 10}', "'logit_bias' is not supported"),
    ("top_logprobs", "3", "'top_logprobs' is not supported"),
    ("top_logprobs", "0", "'top_logprobs' is not supported"),
    ("stop", "0", "'stop' is not supported"),
    ("stream", "1", "'stream' must be true or false"),
    ("ecso", '{"first_answer": 1}', "'ecso.first_answer' must be true or false"),
])
def test_numbers_out_of_range_or_of_the_wrong_type_are_400_naming_the_field(
        server: ServerProcess, image_uri: str, field: str, raw: str, match: str) -> None:
    error = assert_openai_error(_post_raw(server, _with_field(image_uri, field, raw)))
    assert match in error["message"]
    assert error["param"] == field or error["param"].startswith(field)


def test_numbers_at_their_limits_are_accepted(server: ServerProcess, image_uri: str) -> None:
    body = chat_body(image_uri, QUERY, max_tokens=1, max_completion_tokens=1, temperature=2, top_p=1, seed=2**32 - 1,
                     n=1, presence_penalty=0, frequency_penalty=0.0, logit_bias={}, stream=False)
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 1
    both = chat_body(image_uri, QUERY, max_tokens=1, max_completion_tokens=2)
    error = assert_openai_error(httpx.post(server.url + "/v1/chat/completions", json=both, timeout=60))
    assert "differ" in error["message"]


@pytest.mark.parametrize("content, match", [
    (json.dumps({"model": "x", "messages": []}).encode("utf-16"), "not UTF-8 (it looks like UTF-16"),
    (json.dumps({"model": "x", "messages": []}).encode("utf-32"), "not UTF-8 (it looks like UTF-16 or UTF-32)"),
    (b'{"model": "x\\u00e9\xff", "messages": []}', "not UTF-8: byte 18 is invalid"),
    (b'{"model": "\xed\xa0\x80"}', "not UTF-8"),  # an encoded surrogate
    (b'{"messages": [], "messages": [1]}', "repeats the key 'messages'"),
    (b'{"model": "x", "messages": [{"role": "user", "role": "system"}]}', "repeats the key 'role'"),
    (b"", "not valid JSON"),
    (b"\xef\xbb\xbf", "not valid JSON"),
    (b"NaN", "must be a JSON object"),
    (b"[1, 2", "not valid JSON"),
    (b"null", "must be a JSON object"),
    (b'"' + b"a" * 1000, "not valid JSON"),
], ids=["utf-16", "utf-32", "invalid-utf-8", "surrogate", "duplicate-key", "duplicate-nested", "empty", "bom-only",
        "nan", "truncated", "null", "unterminated-string"])
def test_bodies_that_are_not_strict_utf8_json_are_400(server: ServerProcess, content: bytes, match: str) -> None:
    error = assert_openai_error(_post_raw(server, content))
    assert match in error["message"]


def test_a_utf8_bom_is_ignored(server: ServerProcess, image_uri: str) -> None:
    r = _post_raw(server, b"\xef\xbb\xbf" + json.dumps(chat_body(image_uri, QUERY, max_tokens=2)).encode())
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("part, match", [
    ({"type": "text", "text": 5}, "must be a 'text' part with a string"),
    ({"type": "image_url", "image_url": {"url": "http://[::1"}}, "not a valid URL"),
    ({"type": "x" * 10_000}, "..."),  # the reply quotes a client's value shortened
])
def test_odd_content_parts_are_400(server: ServerProcess, image_uri: str, part: dict[str, Any], match: str) -> None:
    body = chat_body(image_uri, QUERY)
    body["messages"][0]["content"][-1 if part["type"] == "image_url" else 0] = part
    error = assert_openai_error(httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60))
    assert match in error["message"] and len(error["message"]) < 300


def test_a_500_shows_no_internal_detail_and_the_log_has_it(tiny_model: ecso_edge.Model, image_uri: str,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from fastapi.testclient import TestClient

    from ecso_edge.server import ServerOptions, app as server_app, create_app

    # a job that ends in an error the server does not expect (what a pybind TypeError was)
    response = server_app._error_response(TypeError("run(): incompatible function arguments: secret"), "chatcmpl-1")
    assert response.status_code == 500
    error = json.loads(bytes(response.body))["error"]
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert "chatcmpl-1" in error["message"]
    assert "secret" not in error["message"] and "TypeError" not in error["message"]
    assert "incompatible function arguments: secret" in capsys.readouterr().err
    # a bug in the handler itself: the same generic answer, with a request id, in OpenAI's shape
    def broken(body: Any) -> Any:
        raise RuntimeError("secret detail from /opt/model.gguf")

    monkeypatch.setattr(server_app, "parse_chat_request", broken)
    with TestClient(create_app(tiny_model, EcsoConfig(), ServerOptions()), raise_server_exceptions=False) as c:
        r = c.post("/v1/chat/completions", json=chat_body(image_uri, QUERY))
    error = r.json()["error"]
    assert r.status_code == 500 and set(error) == {"message", "type", "param", "code"}
    assert "secret" not in r.text and "RuntimeError" not in r.text
    assert r.headers["x-request-id"] in error["message"]
    assert r.headers["x-request-id"] in capsys.readouterr().err


@pytest.mark.parametrize("field, value", [
    ("max_queue", -1), ("max_queue", 1.5), ("max_queue", True), ("max_request_bytes", 0),
    ("default_max_tokens", 0), ("default_max_tokens", 2**31), ("default_max_tokens", "512"),
    ("api_key", ""), ("api_key", "has space"), ("api_key", "clé"), ("model_name", ""), ("model_name", "\udcff"),
    ("allow_remote_images", "yes"),
])
def test_server_options_are_checked(field: str, value: Any) -> None:
    from ecso_edge.server import ServerOptions

    with pytest.raises(ecso_edge.ConfigError, match=field):
        ServerOptions(**{field: value})


@pytest.mark.parametrize("arguments, match", [
    ({"port": 70000}, "port must be an integer from 1 to 65535"), ({"port": 0}, "port"), ({"port": "80"}, "port"),
    ({"port": True}, "port"), ({"host": ""}, "host"), ({"log_level": "loud"}, "log_level"),
])
def test_serve_checks_its_arguments_before_loading_anything(arguments: dict[str, Any], match: str) -> None:
    from ecso_edge.server import serve

    with pytest.raises(ecso_edge.ConfigError, match=match):
        serve("/nonexistent/model.gguf", "/nonexistent/mmproj.gguf", **arguments)


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


def _final_chunk(lines: Iterator[str]) -> dict[str, Any]:
    """Reads a stream to its end and returns the chunk with finish_reason (checking [DONE] follows)."""
    data = [line[len("data:"):].strip() for line in lines if line.startswith("data:")]
    assert data[-1] == "[DONE]"
    final = json.loads(data[-2])
    assert final["choices"][0]["finish_reason"] is not None
    return final  # type: ignore[no-any-return]


SURVIVOR_TOKENS = 400


def test_a_disconnect_under_parallel_stops_only_its_own_request(
        parallel_long_server: ServerProcess, image_uri: str) -> None:
    server = parallel_long_server
    survivor = chat_body(image_uri, "another " + QUERY, max_tokens=SURVIVOR_TOKENS, stream=True)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=survivor, timeout=120) as alone:
        reference = _final_chunk(alone.iter_lines())
    before = health(server)
    victim_body = chat_body(image_uri, QUERY, max_tokens=LONG_TOKENS, stream=True)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=survivor, timeout=120) as other:
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=victim_body, timeout=120) as victim:
            victim_lines = victim.iter_lines()
            for line in victim_lines:  # the victim streams step 4: it is running
                if line.startswith("data:"):
                    break
            other_lines = other.iter_lines()
            for line in other_lines:  # the other request streams too, in the same context
                if line.startswith("data:"):
                    break
            # both were in flight together (the victim still has thousands of tokens to go)
            assert health(server)["engine"]["max_in_flight"] == 2
        # the victim's client goes away (most likely while the other is still streaming; the
        # checks below hold either way): only its generation stops
        final = _final_chunk(other_lines)
    assert final["choices"][0]["finish_reason"] == reference["choices"][0]["finish_reason"] == "length"
    assert final["usage"]["completion_tokens"] == reference["usage"]["completion_tokens"] == SURVIVOR_TOKENS
    assert final["ecso"]["unsafe"] is True and "error" not in final
    h = wait_for(server, lambda h: not h["running"])
    assert h["cancelled"] == before["cancelled"] + 1
    assert h["completed"] == before["completed"] + 1 and h["failed"] == before["failed"]
    assert h["parallel"] == 2


def test_an_app_and_its_session_are_freed_with_their_last_reference(tiny_model: ecso_edge.Model) -> None:
    # FastAPI caches handler functions process-wide: a handler that closed over the queue kept every
    # app's Session (its KV cache) alive; the option fuzzer ran out of address space on it
    import gc
    import weakref

    from ecso_edge.server import ServerOptions, create_app

    app = create_app(tiny_model, EcsoConfig(), ServerOptions())
    queue = weakref.ref(app.state.queue)
    app.state.queue.close()
    del app
    gc.collect()
    assert queue() is None
