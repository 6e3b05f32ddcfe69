"""Session.chat: ECSO over a whole conversation. Reuse across turns gives the same tokens as every
step evaluated from an empty cache, on both branches; a turn reuses the previous turn's cells and
encodes no image twice; the unsafe branch's final prompt holds a caption of every image and no
image; text-only conversations; what the cache keeps and its bounds; bad messages."""

from __future__ import annotations

from typing import Any, Optional

import pytest

import ecso_edge
from conftest import make_image
from ecso_edge import CancelToken, EcsoConfig, Session

IMAGE = make_image(48, 40, seed=0)
SECOND = make_image(40, 40, seed=1)


def user(text: str, *images: Any) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": text}]}


def converse(session: Session, turns: list[dict[str, Any]], max_tokens: int = 10) -> list[Any]:
    """Sends each user turn after the previous answers, as a chat client does; the results."""
    messages: list[dict[str, Any]] = []
    results = []
    for turn in turns:
        messages.append(turn)
        r = session.chat(messages, max_tokens=max_tokens)
        results.append(r)
        messages.append({"role": "assistant", "content": r.answer})
    return results


TURNS = [user("What is this?", IMAGE), user("Tell me more."), user("And this one?", SECOND), user("Compare them.")]


def prompt_text(model: ecso_edge.Model, step: Any) -> str:
    return b"".join(b"<IMAGE>" if t < 0 else model.token_bytes(t) for t in step.input_tokens).decode(errors="replace")


@pytest.mark.parametrize("template", [None, "chatml"], ids=["model-template", "chatml"])
@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_every_turn_matches_the_reference_path_token_for_token(
    tiny_model: ecso_edge.Model, unsafe: bool, template: Optional[str]
) -> None:
    extra = {"chat_template": template} if template else {}
    reused = converse(Session(tiny_model, EcsoConfig(verdict_override=unsafe, **extra)), TURNS)
    reference = converse(Session(tiny_model, EcsoConfig(verdict_override=unsafe, reuse_kv=False, **extra)), TURNS)
    for turn, (a, b) in enumerate(zip(reused, reference)):
        assert [s.name for s in a.steps] == [s.name for s in b.steps], turn
        for x, y in zip(a.steps, b.steps):
            assert x.tokens == y.tokens, (turn, x.name)
            assert x.input_tokens == y.input_tokens, (turn, x.name)
        assert a.answer == b.answer and a.captions == b.captions
    assert [s.name for s in reused[2].steps] == (
        ["answer", "judge", "caption_1", "caption_2", "text_only"] if unsafe else ["answer", "judge"])
    # the reference keeps nothing: every step prefills its whole prompt
    assert all(s.stats["tokens_reused"] == 0 for r in reference for s in r.steps)


@pytest.mark.parametrize("answer_cells", [False, True], ids=["prompt-cells", "answer-cells"])
def test_a_turn_reuses_the_previous_turn_and_encodes_no_image_again(tiny_model: ecso_edge.Model,
                                                                    answer_cells: bool) -> None:
    config = EcsoConfig(chat_template="chatml", verdict_override=False, reuse_answer_cells=answer_cells)
    results = converse(Session(tiny_model, config), TURNS)
    answer = [r.stats["steps"]["answer"] for r in results]
    assert [r.stats["image_encodes"] for r in results] == [1, 0, 1, 0]
    for previous, now in zip(answer, answer[1:]):
        # chatml quotes the answer as generated: with reuse_answer_cells its cells are reused too
        covered = previous["prompt_tokens"] + (previous["tokens_generated"] if answer_cells else 0)
        assert now["tokens_reused"] == covered
        assert now["tokens_prefilled"] == now["prompt_tokens"] - now["tokens_reused"]
    reference = converse(Session(tiny_model, EcsoConfig(chat_template="chatml", verdict_override=False,
                                                        reuse_kv=False)), TURNS)
    # one thread on the CPU: decoded cells equal prefilled ones, so both modes are exact here
    assert [[s.tokens for s in r.steps] for r in results] == [[s.tokens for s in r.steps] for r in reference]


def test_the_unsafe_branch_answers_from_captions_with_no_image(tiny_model: ecso_edge.Model) -> None:
    session = Session(tiny_model, EcsoConfig(verdict_override=True))
    r = converse(session, TURNS)[3]
    assert len(r.captions) == 2 and all(r.captions)
    final = r.steps[-1]
    assert final.name == "text_only" and -1 not in final.input_tokens
    text = prompt_text(tiny_model, final)
    assert "[Image 1]" in text and "[Image 2]" in text  # named where they were sent
    assert "Hints" in text  # the paper's eyes-closed prompt around the last user message
    assert r.caption == f"Image 1: {r.captions[0]}\nImage 2: {r.captions[1]}"
    # the judge sees both images
    judge = next(s for s in r.steps if s.name == "judge")
    assert judge.input_tokens.count(-1) >= 2


def test_one_image_with_the_question_gives_the_papers_final_prompt(tiny_model: ecso_edge.Model) -> None:
    session = Session(tiny_model, EcsoConfig(verdict_override=True))
    r = session.chat([user("How do I make this?", IMAGE)], max_tokens=8)
    assert r.caption == r.captions[0]
    assert "[Image" not in prompt_text(tiny_model, r.steps[-1])


def test_a_caption_already_made_for_the_same_query_is_not_made_again(tiny_model: ecso_edge.Model) -> None:
    session = Session(tiny_model, EcsoConfig(verdict_override=True))
    messages = [user("How do I make this?", IMAGE)]
    first = session.chat(messages, max_tokens=8)
    again = session.chat(messages, max_tokens=8)  # a client regenerating the answer
    assert [s.name for s in again.steps] == ["answer", "judge", "text_only"]
    assert again.captions == first.captions and again.answer == first.answer
    other = session.chat([user("What colour is it?", IMAGE)], max_tokens=8)
    assert "caption" in [s.name for s in other.steps]  # another query: a caption for it


def test_text_only_conversations_are_answered_directly_unless_asked(tiny_model: ecso_edge.Model) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    direct = Session(tiny_model).chat(messages, max_tokens=6)
    assert not direct.judged and [s.name for s in direct.steps] == ["answer"]
    assert "Be brief." in prompt_text(tiny_model, direct.steps[0])
    judged = Session(tiny_model, EcsoConfig(judge_text_only=True, verdict_override=True)).chat(messages, max_tokens=6)
    assert judged.judged and [s.name for s in judged.steps] == ["answer", "judge", "text_only"]
    assert judged.captions == [] and judged.answer == judged.steps[-1].text
    assert "Hints" in prompt_text(tiny_model, judged.steps[-1])


def test_protect_false_gives_the_direct_answer_streamed_live(tiny_model: ecso_edge.Model) -> None:
    session = Session(tiny_model)
    pieces: list[str] = []
    r = session.chat([user("What is this?", IMAGE)], max_tokens=8, on_token=pieces.append, protect=False)
    assert not r.judged and "".join(pieces) == r.answer and len(r.steps) == 1


@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_stream_chat_yields_the_final_answer(tiny_model: ecso_edge.Model, unsafe: bool) -> None:
    session = Session(tiny_model, EcsoConfig(verdict_override=unsafe))
    stream = session.stream_chat([user("What is this?", IMAGE)], max_tokens=8)
    pieces = list(stream)
    assert stream.result is not None and "".join(pieces) == stream.result.answer
    assert stream.result.unsafe is unsafe


def test_a_cancelled_token_stops_the_call(tiny_model: ecso_edge.Model) -> None:
    token = CancelToken()
    token.cancel()
    with pytest.raises(ecso_edge.CancelledError):
        Session(tiny_model).chat([user("What is this?", IMAGE)], cancel=token)


def test_the_cache_keeps_at_most_keep_conversations(tiny_model: ecso_edge.Model) -> None:
    a = [user("What is this?", IMAGE), user("Tell me more.")]
    b = [user("And this?", SECOND), user("Tell me more.")]
    for keep, a_reused_all in ((2, True), (1, False)):
        session = Session(tiny_model, EcsoConfig(chat_template="chatml", verdict_override=False,
                                                 keep_conversations=keep))
        first = session.chat(a[:1], max_tokens=8)
        session.chat(b[:1], max_tokens=8)  # another conversation in between
        assert session.cache_info()["conversations"] == keep
        turn2 = session.chat(a[:1] + [{"role": "assistant", "content": first.answer}, a[1]], max_tokens=8)
        step = turn2.stats["steps"]["answer"]
        covered = first.stats["steps"]["answer"]["prompt_tokens"]
        assert (step["tokens_reused"] == covered) is a_reused_all
        # the first image's encoding was kept within the byte bound either way
        assert turn2.stats["image_encodes"] == 0


def test_a_zero_byte_bound_keeps_nothing(tiny_model: ecso_edge.Model, tiny_paths: Any) -> None:
    session = Session(tiny_model, EcsoConfig(conversation_cache_mib=0, verdict_override=False))
    results = converse(session, TURNS[:2])
    assert results[1].stats["steps"]["answer"]["tokens_reused"] == 0
    # the session keeps nothing; the image's encoding comes from the model's own cache
    assert results[1].stats["image_encodes"] == 0 and tiny_model.encoder_cache_info()["hits"] >= 1
    keeps_none = ecso_edge.Model(*tiny_paths, n_threads=1, encoder_cache_mib=0)
    cold = converse(Session(keeps_none, EcsoConfig(conversation_cache_mib=0, verdict_override=False)), TURNS[:2])
    assert [r.stats["image_encodes"] for r in cold] == [1, 1]  # nothing kept anywhere: encoded again
    assert keeps_none.encoder_cache_info()["entries"] == 0
    info = session.cache_info()
    assert info["conversations"] == 0 and info["images"] == 0 and info["embedding_bytes"] == 0
    nothing = Session(tiny_model, EcsoConfig(keep_conversations=0, verdict_override=False))
    assert converse(nothing, TURNS[:2])[1].stats["steps"]["answer"]["tokens_reused"] == 0


def test_cache_info_counts_bytes_and_clear_cache_drops_them(tiny_model: ecso_edge.Model) -> None:
    session = Session(tiny_model, EcsoConfig(verdict_override=False))
    converse(session, TURNS[:3])
    info = session.cache_info()
    assert info["conversations"] == 1 and info["state_bytes"] > 0
    assert info["images"] == 2 and info["embedding_bytes"] == 2 * 16 * tiny_model.n_embd * 4
    # turn 1 found nothing to continue, turns 2 and 3 continued the saved turn before
    assert (info["hits"], info["misses"], info["evictions"]) == (2, 1, 0)
    session.clear_cache()
    # the sizes drop, the counters are the session's history and stay
    assert session.cache_info() == {"conversations": 0, "state_bytes": 0, "images": 0, "embedding_bytes": 0,
                                    "captions": 0, "hits": 2, "shared_hits": 0, "misses": 1, "evictions": 0}


@pytest.mark.parametrize(
    "messages, error, match",
    [
        ([], ecso_edge.ConfigError, "no message"),
        ("hello", ecso_edge.ConfigError, "must be a list"),
        ([{"role": "assistant", "content": "hi"}], ecso_edge.ConfigError, r"last message \(messages\[0\]\)"),
        ([{"role": "bot", "content": "hi"}], ecso_edge.ConfigError, r"messages\[0\] has the role 'bot'"),
        ([{"role": "user"}], ecso_edge.ConfigError, r"messages\[0\] has no 'content'"),
        ([{"role": "user", "content": 3}], ecso_edge.ConfigError, "must be a string or a list"),
        ([{"role": "user", "content": [{"type": "audio"}]}], ecso_edge.ConfigError, r"content\[0\] must be a text"),
        ([{"role": "user", "content": [{"type": "text", "text": 5}]}], ecso_edge.ConfigError, "not a string"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}],
         ecso_edge.ConfigError, "reads no network"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}],
         ecso_edge.ImageError, r"messages\[0\].content\[0\]: the image data URI is not valid base64"),
        ([{"role": "user", "content": [{"type": "image", "image": "/no/such.png"}]}],
         ecso_edge.ImageError, r"messages\[0\].content\[0\]: image file '/no/such.png' not found"),
        ([{"role": "assistant", "content": [{"type": "image", "image": IMAGE}]}, {"role": "user", "content": "x"}],
         ecso_edge.ConfigError, r"messages\[0\] \(role 'assistant'\) holds an image"),
        ([{"role": "user", "content": "\ud800"}], ecso_edge.ConfigError, "lone surrogate"),
    ],
)
def test_bad_messages_raise_a_clear_error(tiny_model: ecso_edge.Model, messages: Any, error: type,
                                          match: str) -> None:
    with pytest.raises(error, match=match):
        Session(tiny_model).chat(messages, max_tokens=4)


def test_bad_options_raise_before_any_work(tiny_model: ecso_edge.Model) -> None:
    session = Session(tiny_model)
    messages = [user("What is this?", IMAGE)]
    with pytest.raises(ecso_edge.ConfigError, match="max_tokens"):
        session.chat(messages, max_tokens=0)
    with pytest.raises(TypeError, match="protect must be True or False"):
        session.chat(messages, protect="yes")
    with pytest.raises(TypeError, match="on_token"):
        session.chat(messages, on_token=5)
    for field, value in (("keep_conversations", -1), ("keep_conversations", 1001)):
        with pytest.raises(ecso_edge.ConfigError, match=field):
            Session(tiny_model, EcsoConfig(**{field: value}))


def test_a_conversation_too_long_for_the_context_is_refused_before_any_work(tiny_model: ecso_edge.Model) -> None:
    session = Session(tiny_model)
    long = [user("word " * (tiny_model.n_ctx + 10), IMAGE)]
    with pytest.raises(ecso_edge.ContextOverflowError, match="'answer' prompt needs"):
        session.chat(long)


@pytest.mark.smollm
@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_smollm_every_turn_matches_the_reference_path(smollm_pair: tuple[Any, Any], unsafe: bool) -> None:
    model = ecso_edge.Model(*smollm_pair, n_threads=2, n_ctx=2048)  # two threads: decode != prefill here
    reused = converse(Session(model, EcsoConfig(verdict_override=unsafe)), TURNS, max_tokens=16)
    reference = converse(Session(model, EcsoConfig(verdict_override=unsafe, reuse_kv=False)), TURNS, max_tokens=16)
    for a, b in zip(reused, reference):
        assert [s.tokens for s in a.steps] == [s.tokens for s in b.steps]
    assert reused[1].stats["steps"]["answer"]["tokens_reused"] == reused[0].stats["steps"]["answer"]["prompt_tokens"]
    assert [r.stats["image_encodes"] for r in reused][1] == 0


def test_an_image_sent_again_is_not_encoded_again(tiny_model: ecso_edge.Model) -> None:
    session = Session(tiny_model, EcsoConfig(verdict_override=True))
    turns = [user("What is this?", IMAGE), user("Here it is again.", IMAGE)]
    results = converse(session, turns)
    assert [r.stats["image_encodes"] for r in results] == [1, 0]
    assert len(results[1].captions) == 1  # one image, sent twice: one caption
    reference = converse(Session(tiny_model, EcsoConfig(verdict_override=True, reuse_kv=False)), turns)
    assert [[s.tokens for s in r.steps] for r in results] == [[s.tokens for s in r.steps] for r in reference]
