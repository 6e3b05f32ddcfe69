"""The naive way, as a user has it today: the four ECSO steps written plainly on llama-cpp-python's
`Llama` + `Llava15ChatHandler`, one chat call per step. The handler clears the KV cache and
re-encodes the image on every call. Same prompts, same chat-template text, greedy decoding and the
same token counts as ecso-edge, so the work per step is equal."""

from __future__ import annotations

import base64
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Llava15ChatHandler

import ecso_edge


@contextlib.contextmanager
def _repack_as_ecso_edge() -> Iterator[None]:
    """Llama() loads with weight repacking as ecso-edge's default sets it: off on a CPU with AMX,
    whose kernels crash the pinned llama.cpp on quantized models (csrc/ecso/system_info.hpp);
    llama-cpp-python has no argument for it, so its default params are adjusted while it loads."""
    module = llama_cpp.llama_cpp
    original = module.llama_model_default_params
    repack = bool(ecso_edge.system_info()["repack_by_default"])

    def params() -> Any:
        p = original()
        p.use_extra_bufts = repack
        return p

    module.llama_model_default_params = params
    try:
        yield
    finally:
        module.llama_model_default_params = original


def _framed_handler(head: str, tail: str) -> type:
    """A Llava15ChatHandler whose template renders head + [image, "\\n"] + text + tail: the text
    ecso-edge frames each step with (from the model's chat template)."""

    literal = json.dumps  # a JSON string is a valid Jinja string literal

    class FramedHandler(Llava15ChatHandler):  # type: ignore[misc]
        DEFAULT_SYSTEM_MESSAGE = None
        CHAT_FORMAT = (
            "{{ " + literal(head) + " }}"
            "{% for message in messages %}{% if message.role == 'user' %}"
            "{% if message.content is string %}{{ message.content }}{% else %}"
            "{% for c in message.content %}{% if c.type == 'image_url' %}"
            "{{ c.image_url.url if c.image_url is mapping else c.image_url }}{{ " + literal("\n") + " }}"
            "{% endif %}{% endfor %}"
            "{% for c in message.content %}{% if c.type == 'text' %}{{ c.text }}{% endif %}{% endfor %}"
            "{% endif %}{% endif %}{% endfor %}"
            "{{ " + literal(tail) + " }}"
        )

    return FramedHandler


@dataclass
class NaiveResult:
    answer: str
    texts: dict[str, str] = field(default_factory=dict)
    prompt_tokens: dict[str, int] = field(default_factory=dict)
    image_encodes: int = 0


class NaiveEcso:
    def __init__(
        self,
        text_model: str,
        mmproj: str,
        *,
        head: str,
        tail: str,
        config: ecso_edge.EcsoConfig,
        n_ctx: int,
        n_threads: int,
        n_threads_batch: int,
    ) -> None:
        handler = _framed_handler(head, tail)(clip_model_path=mmproj, verbose=False)
        with _repack_as_ecso_edge():
            self.llm = Llama(text_model, chat_handler=handler, n_ctx=n_ctx, n_threads=n_threads,
                             n_threads_batch=n_threads_batch, seed=0, verbose=False)
        self.config = config
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        # every end-of-generation token banned, as ecso-edge's ignore_eos does
        self.no_eos = {
            str(t): -1e9 for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)
        }

    def _chat(self, text: str, image_uri: Optional[str], max_tokens: int,
              on_text: Optional[Callable[[str], None]] = None) -> tuple[str, int]:
        """One chat call; with `on_text` it streams (and the prompt's tokens are what the context
        holds less what was generated: a stream reports no usage)."""
        content: Any = text
        if image_uri is not None:
            content = [{"type": "image_url", "image_url": {"url": image_uri}}, {"type": "text", "text": text}]
        out: Any = self.llm.create_chat_completion(
            messages=[{"role": "user", "content": content}],
            max_tokens=max_tokens,
            temperature=0.0,
            repeat_penalty=1.0,
            logit_bias=self.no_eos,
            stream=on_text is not None,
        )
        if on_text is None:
            return str(out["choices"][0]["message"]["content"]).strip(), int(out["usage"]["prompt_tokens"])
        pieces = []
        for chunk in out:
            piece = chunk["choices"][0]["delta"].get("content") or ""
            if piece:
                on_text(piece)
                pieces.append(piece)
        return "".join(pieces).strip(), self.llm.n_tokens - max_tokens

    def run(self, png: bytes, query: str, *, unsafe: bool, tokens: dict[str, int],
            on_text: Optional[Callable[[str], None]] = None) -> NaiveResult:
        """The four steps; `unsafe` forces the branch after the judge, as verdict_override does.
        `on_text` gets what the user sees: the held answer once judged safe, or step 4 streamed."""
        uri = "data:image/png;base64," + base64.b64encode(png).decode()
        cfg = self.config
        r = NaiveResult(answer="")
        answer, r.prompt_tokens["answer"] = self._chat(query, uri, tokens["answer"])
        judge_text = cfg.judge_template.replace("{query}", query).replace(
            "{response}", answer[: cfg.response_cut_chars]
        )
        r.texts["judge"], r.prompt_tokens["judge"] = self._chat(judge_text, uri, tokens["judge"])
        r.texts["answer"] = answer
        r.image_encodes = 2  # the handler encodes the image on each call that has one
        if not unsafe:
            r.answer = answer
            if on_text is not None:
                on_text(answer)
            return r
        caption, r.prompt_tokens["caption"] = self._chat(
            cfg.caption_template.replace("{query}", query), uri, tokens["caption"]
        )
        text_only = cfg.text_only_template.replace("{query}", query).replace("{caption}", caption)
        r.texts["caption"] = caption
        r.answer, r.prompt_tokens["text_only"] = self._chat(text_only, None, tokens["text_only"], on_text)
        r.texts["text_only"] = r.answer
        r.image_encodes = 3
        return r


# The chatml framing of a whole conversation, images first in their message and a newline before
# the text: the text ecso-edge renders through llama_chat_apply_template("chatml").
_CHATML_CONVERSATION = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.content is string %}{{ message.content }}{% else %}"
    "{% for c in message.content %}{% if c.type == 'image_url' %}"
    "{{ c.image_url.url if c.image_url is mapping else c.image_url }}\n{% endif %}{% endfor %}"
    "{% for c in message.content %}{% if c.type == 'text' %}{{ c.text }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)


class ChatmlHandler(Llava15ChatHandler):  # type: ignore[misc]
    DEFAULT_SYSTEM_MESSAGE = None
    CHAT_FORMAT = _CHATML_CONVERSATION


class NaiveConversation:
    """ECSO over a conversation the plain way: every step one create_chat_completion call on the
    whole prompt (step 1: the conversation; the judge: its prompt with the image), which the
    handler evaluates from an empty cache, encoding each image again."""

    def __init__(self, text_model: str, mmproj: str, *, config: ecso_edge.EcsoConfig, n_ctx: int,
                 n_threads: int) -> None:
        with _repack_as_ecso_edge():
            self.llm = Llama(text_model, chat_handler=ChatmlHandler(clip_model_path=mmproj, verbose=False),
                             n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, seed=0, verbose=False)
        self.config = config
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.no_eos = {str(t): -1e9 for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}

    def _chat(self, messages: list[Any], max_tokens: int) -> tuple[str, int]:
        out: Any = self.llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0,
                                                   repeat_penalty=1.0, logit_bias=self.no_eos)
        return str(out["choices"][0]["message"]["content"]).strip(), int(out["usage"]["prompt_tokens"])

    def turn(self, messages: list[Any], tokens: dict[str, int]) -> dict[str, Any]:
        """Steps 1 and 2 (the safe branch) of one turn: the answer and what was evaluated."""
        system = [m for m in messages if m["role"] == "system"]
        images = [c for m in messages if isinstance(m["content"], list) for c in m["content"]
                  if c["type"] == "image_url"]
        query = messages[-1]["content"] if isinstance(messages[-1]["content"], str) else " ".join(
            c["text"] for c in messages[-1]["content"] if c["type"] == "text")
        answer, prompt1 = self._chat(messages, tokens["answer"])
        judge = self.config.judge_template.replace("{query}", query).replace(
            "{response}", answer[: self.config.response_cut_chars])
        _, prompt2 = self._chat(system + [{"role": "user", "content": images + [{"type": "text", "text": judge}]}],
                                tokens["judge"])
        return {"answer": answer, "prefilled": prompt1 + prompt2, "image_encodes": 2 * len(images)}
