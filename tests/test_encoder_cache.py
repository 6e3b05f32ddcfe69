"""The Model's encoder cache: an image one conversation has encoded is not encoded again by another
conversation or another Session on the same Model, with the same tokens as the reference path;
single-turn requests keep encoding per request; the byte bound evicts the least recently used;
`encoder_cache_mib` is checked."""

from __future__ import annotations

from typing import Any

import pytest

import ecso_edge
from conftest import make_image
from ecso_edge import EcsoConfig, Session

IMAGE = make_image(48, 40, seed=0)
TINY_OUTPUT_BYTES = 16 * 4  # 16 image tokens of the tiny pair, times 4 bytes, per embedding dimension


def ask(text: str, image: Any = IMAGE) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def tokens(r: Any) -> list[tuple[str, list[int]]]:
    return [(s.name, list(s.tokens)) for s in r.steps]


@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_another_session_reuses_the_encoding_with_the_same_tokens(tiny_model: ecso_edge.Model, unsafe: bool) -> None:
    config = EcsoConfig(verdict_override=unsafe)
    first = Session(tiny_model, config).chat(ask("What is this?"), max_tokens=8)
    second = Session(tiny_model, config).chat(ask("Describe it in detail."), max_tokens=8)
    reference = Session(tiny_model, config.replace(reuse_kv=False)).chat(ask("Describe it in detail."), max_tokens=8)
    assert first.stats["image_encodes"] == 1 and second.stats["image_encodes"] == 0
    assert tokens(second) == tokens(reference)
    info = tiny_model.encoder_cache_info()
    assert info["entries"] == 1 and info["bytes"] == TINY_OUTPUT_BYTES * tiny_model.n_embd
    assert info["hits"] >= 1 and info["limit_bytes"] == 256 << 20


def test_single_turn_requests_encode_their_image_each_time(tiny_model: ecso_edge.Model) -> None:
    runs = [Session(tiny_model).run(IMAGE, "What is this?", max_tokens=4) for _ in range(2)]
    assert [r.stats["image_encodes"] for r in runs] == [1, 1]
    assert tiny_model.encoder_cache_info()["entries"] == 0


def test_the_bound_evicts_the_least_recently_used(tiny_paths: Any) -> None:
    model = ecso_edge.Model(*tiny_paths, n_threads=1, encoder_cache_mib=1)
    per_image = TINY_OUTPUT_BYTES * model.n_embd
    fits = (1 << 20) // per_image
    session = Session(model, EcsoConfig(keep_conversations=0))
    images = [make_image(40, 40, seed=100 + i) for i in range(fits + 1)]
    for i, image in enumerate(images):
        if i == fits:
            # the cache is full: the first image, used again now (from the session's own copy),
            # is no longer the oldest, so the second one goes out for the last
            assert session.chat(ask("Again?", images[0]), max_tokens=1, protect=False).stats["image_encodes"] == 0
        assert session.chat(ask("What is this?", image), max_tokens=1, protect=False).stats["image_encodes"] == 1
    info = model.encoder_cache_info()
    assert (info["entries"], info["evictions"]) == (fits, 1) and info["bytes"] == fits * per_image
    fresh = Session(model)  # its own conversation cache holds nothing: only the model's can serve
    again = [fresh.chat(ask("Once more?", images[i]), max_tokens=1, protect=False).stats["image_encodes"]
             for i in (0, 1)]
    assert again == [0, 1]


def test_clear_encoder_cache_drops_the_encodings(tiny_model: ecso_edge.Model) -> None:
    Session(tiny_model).chat(ask("What is this?"), max_tokens=2, protect=False)
    assert tiny_model.encoder_cache_info()["entries"] == 1
    tiny_model.clear_encoder_cache()
    info = tiny_model.encoder_cache_info()
    assert info["entries"] == 0 and info["bytes"] == 0
    assert Session(tiny_model).chat(ask("What is this?"), max_tokens=2, protect=False).stats["image_encodes"] == 1


@pytest.mark.parametrize("value, error, match", [
    (-1, ecso_edge.ConfigError, r"encoder_cache_mib must be in 0\.\.1073741824 \(got -1\) \(0 keeps none\)"),
    (2**30 + 1, ecso_edge.ConfigError, r"encoder_cache_mib must be in 0\.\.1073741824"),
    ("256", TypeError, "encoder_cache_mib must be an int, not str"),
    (True, TypeError, "encoder_cache_mib must be an int, not bool"),
])
def test_encoder_cache_mib_is_checked(tiny_paths: Any, value: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ecso_edge.Model(*tiny_paths, encoder_cache_mib=value)
