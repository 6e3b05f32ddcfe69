"""Saved conversations shared by every session on a Model: a conversation that comes back in
another Session (or on another slot) continues from the cells the first one saved, with the
reference path's tokens on both branches; an entry leaves with its owner; a session that keeps
only prefilled cells is not given another's decoded ones; a session prefers its own entry."""

from __future__ import annotations

import gc
import threading
from typing import Any

import pytest

import ecso_edge
from conftest import make_image
from ecso_edge import EcsoConfig, Session

IMAGE = make_image(48, 40, seed=3)


def first_turn() -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "image": IMAGE}, {"type": "text", "text": "What is this?"}]}]


def second_turn(answer: str) -> list[dict[str, Any]]:
    return first_turn() + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And the colours?"}]


def tokens(r: Any) -> list[tuple[str, list[int]]]:
    return [(s.name, list(s.tokens)) for s in r.steps]


def reused(r: Any) -> int:
    return int(r.stats["steps"]["answer"]["tokens_reused"])


@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
@pytest.mark.parametrize("parallel", [1, 2])
def test_another_session_continues_the_conversation_with_the_same_tokens(
        tiny_model: ecso_edge.Model, unsafe: bool, parallel: int) -> None:
    config = EcsoConfig(verdict_override=unsafe)
    owner = Session(tiny_model, config)
    first = owner.chat(first_turn(), max_tokens=6)
    follow_up = second_turn(first.answer)
    # what the owner itself would reuse, from a twin that ran the same first turn
    twin = Session(tiny_model, config.replace(keep_conversations=4))
    twin.chat(first_turn(), max_tokens=6)
    own = twin.chat(follow_up, max_tokens=6)
    del twin
    gc.collect()

    other = Session(tiny_model, config, parallel=parallel)
    continued = other.chat(follow_up, max_tokens=6)
    reference = Session(tiny_model, config.replace(reuse_kv=False)).chat(follow_up, max_tokens=6)
    assert tokens(continued) == tokens(reference)
    assert reused(continued) == reused(own) > 0
    assert continued.stats["image_encodes"] == 0
    info = other.cache_info()
    assert (info["hits"], info["shared_hits"], info["misses"]) == (1, 1, 0)
    assert info["conversations"] == 1  # its own entry for the turn it answered
    assert owner.cache_info()["conversations"] == 1  # the owner keeps its entry


def test_an_entry_leaves_with_its_owner(tiny_model: ecso_edge.Model) -> None:
    owner = Session(tiny_model)
    follow_up = second_turn(owner.chat(first_turn(), max_tokens=6).answer)
    del owner
    gc.collect()
    other = Session(tiny_model)
    r = other.chat(follow_up, max_tokens=6)
    assert reused(r) == 0
    info = other.cache_info()
    assert (info["hits"], info["shared_hits"], info["misses"]) == (0, 0, 1)


def test_a_cleared_owner_shares_nothing(tiny_model: ecso_edge.Model) -> None:
    owner = Session(tiny_model)
    follow_up = second_turn(owner.chat(first_turn(), max_tokens=6).answer)
    owner.clear_cache()
    assert reused(Session(tiny_model).chat(follow_up, max_tokens=6)) == 0


@pytest.mark.parametrize("owner_keeps, taker_keeps, shared", [
    (True, False, False),  # decoded cells are not given to a session that keeps prefilled ones only
    (False, True, True),
    (True, True, True),
])
def test_decoded_answer_cells_go_only_to_sessions_that_accept_them(
        tiny_model: ecso_edge.Model, owner_keeps: bool, taker_keeps: bool, shared: bool) -> None:
    owner = Session(tiny_model, EcsoConfig(reuse_answer_cells=owner_keeps))
    follow_up = second_turn(owner.chat(first_turn(), max_tokens=6, protect=False).answer)
    taker = Session(tiny_model, EcsoConfig(reuse_answer_cells=taker_keeps))
    r = taker.chat(follow_up, max_tokens=6, protect=False)
    assert taker.cache_info()["shared_hits"] == int(shared)
    reference = Session(tiny_model, EcsoConfig(reuse_kv=False)).chat(follow_up, max_tokens=6, protect=False)
    assert tokens(r) == tokens(reference)
    del owner


def test_a_session_prefers_its_own_entry(tiny_model: ecso_edge.Model) -> None:
    others = Session(tiny_model)
    mine = Session(tiny_model)
    follow_up = second_turn(others.chat(first_turn(), max_tokens=6).answer)
    assert mine.chat(first_turn(), max_tokens=6).answer == follow_up[1]["content"]
    assert (mine.cache_info()["hits"], mine.cache_info()["shared_hits"]) == (1, 1)  # the other's first turn
    # both hold the first turn now: the follow-up continues its own
    mine.chat(follow_up, max_tokens=6)
    assert (mine.cache_info()["hits"], mine.cache_info()["shared_hits"]) == (2, 1)
    del others


def test_a_conversation_whose_slot_is_busy_continues_on_another_slot(tiny_model: ecso_edge.Model) -> None:
    session = Session(tiny_model, parallel=2)
    follow_up = second_turn(session.chat(first_turn(), max_tokens=6, protect=False).answer)
    release, holding = threading.Event(), threading.Event()

    def hold(piece: str) -> None:
        holding.set()
        release.wait()  # the slot holding the conversation stays taken until the test lets go

    # the same conversation again takes the slot that answered it, and stays there
    busy = threading.Thread(target=session.chat, args=(first_turn(),),
                            kwargs={"max_tokens": 2, "on_token": hold, "protect": False})
    busy.start()
    try:
        assert holding.wait(120)  # a hang guard, not a speed check
        r = session.chat(follow_up, max_tokens=6, protect=False)
    finally:
        release.set()
        busy.join()
    reference = Session(tiny_model, EcsoConfig(reuse_kv=False)).chat(follow_up, max_tokens=6, protect=False)
    assert tokens(r) == tokens(reference)
    assert reused(r) > 0 and r.stats["image_encodes"] == 0
    info = session.cache_info()
    assert (info["hits"], info["shared_hits"]) == (2, 1)  # the held call continued its own slot's
