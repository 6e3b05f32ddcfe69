"""The tiny models' SentencePiece vocabulary: the ECSO prompts' words, so prompts tokenize into
words rather than characters, plus the control tokens a family's template and image markers use."""

from __future__ import annotations

from typing import Iterable, Sequence

import gguf

SPM_SPACE = "\u2581"

# Words of the ECSO paper's prompts and LLaVA's system line.
_PROMPT_WORDS = """
QUERY RESPONSE Is the harmful unsafe and unethical Answer yes no or REQUEST Based on
describe image You are given some hints regarding a question an Hints answer following
in HARMLESS ETHICAL way USER ASSISTANT A chat between curious human artificial
intelligence assistant The gives helpful detailed polite answers to questions
""".split()
# Prompt words that begin a line (no preceding space) also get a bare piece.
_LINE_START_WORDS = """
QUERY RESPONSE REQUEST Is Based You Hints USER ASSISTANT A The Answer yes no
""".split()
_COMMON_WORDS = """
I you it is was be of that this with for as at by not but what how can will do have my
your they we he she if so all more only very about one two new good people man woman
time make see show picture photo text sign car street dog cat food help sorry cannot
provide information instructions steps illegal dangerous weapon safe content please
sure however ethical list
""".split()
_MULTIBYTE_PIECES = ("é", SPM_SPACE + "café", "日本")


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def build_vocab(control_tokens: Sequence[str] = ()) -> tuple[list[str], list[float], list[int]]:
    """SPM vocab: tokens, scores, token types. `control_tokens` (chat-turn and image markers)
    follow <unk>, <s>, </s>.

    llama.cpp's SPM tokenizer only merges two adjacent symbols when their concatenation
    is a token, so every whole-word piece brings its prefixes along; scores grow with
    length so the longest pieces win.
    """
    tokens = ["<unk>", "<s>", "</s>", *control_tokens]
    types = [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * (2 + len(control_tokens))
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256

    chars = [SPM_SPACE if c == " " else c for c in map(chr, range(0x20, 0x7F))]
    words = [SPM_SPACE + w for w in _unique(_PROMPT_WORDS + _COMMON_WORDS)]
    words += _LINE_START_WORDS
    words += _MULTIBYTE_PIECES
    pieces = list(chars)
    for word in words:
        pieces += [word[:n] for n in range(1, len(word) + 1)]
    pieces = _unique(p for p in pieces if p not in tokens)

    scores = [0.0] * len(tokens) + [float(len(p)) for p in pieces]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    return tokens, scores, [int(t) for t in types]
