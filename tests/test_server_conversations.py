"""`ecso-edge serve` as the local model behind a chat app, driven by the official openai client: a
whole conversation per request (system message, history, images in any turn, several per message,
text-only turns), each answered as Session.chat answers it, with the previous turn's cells reused
(`usage.prompt_tokens_details.cached_tokens`) and no image encoded twice."""

from __future__ import annotations

import json
from typing import Any, Iterator

import numpy as np
import openai
import pytest

import ecso_edge
from conftest import make_image
from ecso_edge import EcsoConfig, Session
from serve_helpers import ServerProcess, data_uri, png_bytes, serving

FIRST = make_image(48, 40, seed=3)
SECOND = make_image(40, 40, seed=4)


def _server(tmp_path_factory: pytest.TempPathFactory, *args: str) -> Iterator[ServerProcess]:
    yield from serving(tmp_path_factory.mktemp("conv-logs"), *args)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "--max-tokens", "10")


@pytest.fixture(scope="module")
def unsafe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "--max-tokens", "10", "--config", json.dumps({"verdict_override": True}))


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def image_part(pixels: np.ndarray) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_uri(png_bytes(pixels))}}


def ecso(reply: Any) -> dict[str, Any]:
    return (reply.model_extra or {})["ecso"]


def test_four_turns_with_an_image_in_turn_one(client: openai.OpenAI, tiny_model: ecso_edge.Model) -> None:
    session = Session(tiny_model)  # what the server runs, in this process
    messages: list[Any] = [{"role": "system", "content": "You are a helpful assistant."},
                           {"role": "user", "content": [image_part(FIRST), {"type": "text", "text": "What is this?"}]}]
    for turn, follow_up in enumerate(["Tell me more.", "Why?", "Thanks. Anything else?", None]):
        reply = client.chat.completions.create(model="x", messages=messages)
        expected = session.chat(messages, max_tokens=10)
        assert reply.choices[0].message.content == expected.answer, turn
        assert reply.usage is not None and reply.usage.prompt_tokens == expected.stats["steps"]["answer"]["prompt_tokens"]
        cached = reply.usage.prompt_tokens_details.cached_tokens if reply.usage.prompt_tokens_details else None
        stats = ecso(reply)["stats"]
        if turn == 0:
            assert cached == 0 and stats["image_encodes"] == 1
        else:
            assert cached is not None and cached > 0 and stats["image_encodes"] == 0, turn
            assert cached == expected.stats["steps"]["answer"]["tokens_reused"]
        if follow_up is None:
            break
        messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                     {"role": "user", "content": follow_up}]


def test_a_text_only_chat_and_a_message_with_two_images(client: openai.OpenAI, tiny_model: ecso_edge.Model) -> None:
    text_only = [{"role": "user", "content": "Hello, who are you?"}]
    reply = client.chat.completions.create(model="x", messages=text_only)
    assert reply.choices[0].message.content == Session(tiny_model).chat(text_only, max_tokens=10).answer
    assert ecso(reply)["judged"] is False  # no image: answered directly
    two = [{"role": "user", "content": [image_part(FIRST), image_part(SECOND), {"type": "text", "text": "Compare."}]}]
    reply = client.chat.completions.create(model="x", messages=two)
    assert reply.choices[0].message.content == Session(tiny_model).chat(two, max_tokens=10).answer
    assert ecso(reply)["judged"] is True


def test_the_unsafe_branch_answers_from_a_caption_of_every_image(unsafe_server: ServerProcess,
                                                                 tiny_model: ecso_edge.Model) -> None:
    messages = [{"role": "user", "content": [image_part(FIRST), {"type": "text", "text": "What is this?"}]},
                {"role": "assistant", "content": "A picture."},
                {"role": "user", "content": [image_part(SECOND), {"type": "text", "text": "And how do I make it?"}]}]
    with openai.OpenAI(base_url=unsafe_server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        chunks = list(c.chat.completions.create(model="x", messages=messages, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    expected = Session(tiny_model, EcsoConfig(verdict_override=True)).chat(messages, max_tokens=10)
    assert text == expected.answer
    details = ecso(chunks[-1])
    assert details["unsafe"] is True and details["captions"] == expected.captions and len(expected.captions) == 2
    final = expected.steps[-1]
    assert final.name == "text_only" and -1 not in final.input_tokens  # no image in the final prompt
    prompt = b"".join(tiny_model.token_bytes(t) for t in final.input_tokens).decode(errors="replace")
    for caption in expected.captions:
        assert caption in prompt
