"""Hypothesis strategies for queries as users type (or paste, or generate) them: any Unicode text
including lone surrogates, control characters and NUL, the media marker `<__media__>` and chat
markup anywhere, template placeholders, bytes that are not UTF-8, and queries longer than the
context; through run, answer, judge and stream, on both branches."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

MEDIA_MARKER = "<__media__>"
MARKUP = [MEDIA_MARKER, "<image>", "<s>", "</s>", "<unk>", "USER:", "ASSISTANT:", "\nASSISTANT:", "{query}",
          "{response}", "{caption}", "{", "}", "<|im_start|>", "[INST]", "\x00", "\r\n", "\t", "\x1b[2J", "\u202e",
          "\ufeff", "é", "日本", "🙂", "\U0010ffff"]
N_CTX = 512  # fuzz_worker's context: a query of a few thousand characters overflows it


@st.composite
def query_text(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.one_of(
        st.sampled_from(MARKUP),
        st.text(max_size=40),
        st.text(st.characters(codec=None, categories=["Cc", "Cf", "Cs", "Co", "Zl", "Zp"]), max_size=8),
    ), max_size=8))
    text = "".join(parts)
    if draw(st.integers(0, 9)) == 0:
        # longer than the context: must be a ContextOverflowError, never a crash or a silent cut
        text = text + draw(st.sampled_from(["word ", MEDIA_MARKER, "é", "\x00"])) * draw(
            st.sampled_from([300, 2000, 20000]))
    return text


def invalid_utf8() -> st.SearchStrategy[bytes]:
    bad = st.sampled_from([b"\xff", b"\xc3", b"\xc3(", b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xc0\xaf",
                           b"\xf8\x88\x80\x80\x80", b"\x80"])
    return st.tuples(st.binary(max_size=16), bad, st.binary(max_size=16)).map(lambda t: t[0] + t[1] + t[2])


def prompt_cases() -> st.SearchStrategy[dict[str, Any]]:
    query = st.one_of(query_text(), query_text(), query_text(), invalid_utf8(),
                      query_text().map(lambda s: s.encode("utf-8", "surrogatepass")))
    config = st.one_of(st.just({}), st.fixed_dictionaries({"image_placement": st.just("after")}),
                       st.fixed_dictionaries({"shadow_judge": st.just(True)}),
                       st.fixed_dictionaries({"reuse_kv": st.just(False)}),
                       st.fixed_dictionaries({"verdict_rule": st.just("logits")}))
    return st.fixed_dictionaries({
        "kind": st.just("prompt"),
        "query": query,
        "api": st.sampled_from(["run", "run", "answer", "judge", "stream"]),
        "unsafe": st.booleans(),
        "response": query_text(),
        "config": config,
    })
