"""The public Session: a thin wrapper that turns Python inputs (images, messages, callbacks) into
calls of the C++ core. The models are in model.py, the iterator form of streaming in stream.py."""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Optional, Sequence, Union

from . import _core
from ._core import CancelToken
from .arguments import INT32_MAX, bool_arg, callable_arg, int_arg, optional_bool_arg
from .errors import CancelledError, ConfigError, StateFileError
from .images import ImageInput, load_rgb
from .messages import to_core_messages
from .model import Model, TextModel, _path
from .stream import EcsoStream

__all__ = ["Model", "TextModel", "Session", "EcsoStream", "CancelToken"]

# on_progress(step, phase, done, total): phase "prefill" (total: positions to evaluate), "encode"
# (done: encoder graph nodes so far, total 0) or "generate" (done tokens of at most total).
ProgressCallback = Callable[[str, str, int, int], object]

def _text(value: object, what: str) -> Union[str, bytes]:
    """The query or response as the core takes it. A str holding lone surrogates (text decoded
    with errors="surrogateescape", say) has no UTF-8 form: refuse it here with a typed error."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ConfigError(
                f"the {what} is not valid Unicode: character {e.start} is a lone surrogate "
                f"({value[e.start:e.end]!r}); decode the text with errors='replace' first"
            ) from None
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)  # the core checks that it is UTF-8
    raise ConfigError(f"the {what} must be a str, not {type(value).__name__}")


def _state_path(name: str, value: Any) -> str:
    path = _path(value, name)
    if not path:
        raise ConfigError(f"{name} must be a file path, not an empty string")
    if os.path.isdir(path):
        raise ConfigError(f"{name} {path!r} is a folder; give the state file's path (e.g. {path}/state.ecso)")
    return path


def _max_tokens(value: object) -> int:
    return int_arg("max_tokens", value, 1, INT32_MAX)


def _cancel(value: object) -> Optional[CancelToken]:
    if value is not None and not isinstance(value, CancelToken):
        raise TypeError(f"cancel must be an ecso_edge.CancelToken or None, not {type(value).__name__}")
    return value


class Session:
    """ECSO over a Model. ``run`` answers with protection; ``answer`` gives the direct answer.

    ``parallel=N`` lets N calls run together in one llama context (each with the model's n_ctx
    of KV cells; the context holds N times that): calls from N threads, or ``run_many``, decode
    one batch per step for all of them (docs/parallel.md). A context (this session's, or a
    ``judge_model``'s) that llama.cpp cannot allocate raises ``ResourceError`` here. With the default ``parallel=1`` calls
    on one session are serialised: a second thread waits for the first. Each call may take its
    own ``cancel=CancelToken()``: cancelling it (from any thread, before or during the call, or
    while it waits for a free slot) makes that call raise ``CancelledError``, and no other.
    ``session.cancel()`` cancels the calls in progress, if any. Ctrl-C stops a call on the main
    thread promptly and raises ``KeyboardInterrupt``. ``on_progress(step, phase, done, total)``
    reports where a call is.

    >>> session = Session(model)                       # the paper's preset
    >>> r = session.run("photo.jpg", "How do I make this?")
    >>> r.answer, r.unsafe, r.stats["image_encodes"]
    """

    def __init__(self, model: Model, config: Optional[_core.EcsoConfig] = None, *, parallel: int = 1,
                 judge_model: Optional[TextModel] = None, judge_format: Optional[str] = None,
                 state: Optional[Union[str, "os.PathLike[str]"]] = None) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"model must be an ecso_edge.Model, not {type(model).__name__}")
        if config is not None and not isinstance(config, _core.EcsoConfig):
            raise TypeError(f"config must be an ecso_edge.EcsoConfig or None, not {type(config).__name__}")
        parallel = int_arg("parallel", parallel, 1, _core.Session.max_parallel,
                           " (the requests that run together in one context)")
        if judge_model is not None and not isinstance(judge_model, TextModel):
            raise TypeError(f"judge_model must be an ecso_edge.TextModel or None, not {type(judge_model).__name__}")
        if judge_format is not None and not isinstance(judge_format, str):
            raise TypeError(f"judge_format must be a str or None, not {type(judge_format).__name__}")
        if judge_model is not None and judge_format is None:
            raise ConfigError("judge_model needs judge_format: one of " + ", ".join(_core.guard_format_names()))
        self.model = model
        self.judge_model = judge_model
        self.state_path = None if state is None else _state_path("state", state)
        self._core = _core.Session(model._core, config if config is not None else _core.EcsoConfig(),
                                   parallel=parallel, judge_model=judge_model._core if judge_model else None,
                                   judge_format=judge_format or "")
        #: What became of ``state``: "none" (not given), "new" (no file yet), "loaded", or
        #: "refused: <why>" (the session then starts cold; a RuntimeWarning says so too).
        self.state_status = "none"
        if self.state_path is not None:
            self.state_status = self._open_state(self.state_path)

    def _open_state(self, path: str) -> str:
        if not self._core.config.reuse_kv:
            raise ConfigError("state= needs reuse_kv: the reference path keeps nothing between calls")
        if not os.path.exists(path):
            return "new"
        try:
            self._core.load_state(path)
        except StateFileError as e:
            warnings.warn(f"ecso-edge: starting with an empty cache: {e}", RuntimeWarning, stacklevel=3)
            return f"refused: {e}"
        return "loaded"

    def save_state(self, path: Optional[Union[str, "os.PathLike[str]"]] = None) -> None:
        """Write what ``chat`` keeps (each conversation's KV cells and the map of what they hold,
        image encodings, captions) to ``path`` (default: the ``state=`` file), atomically: a crash
        during the save leaves the previous file or the new one. Waits for calls in progress.
        The file holds the conversations' text: keep it where the conversations may be kept.
        See docs/conversations.md."""
        if path is None:
            if self.state_path is None:
                raise ConfigError("save_state needs a path (or a Session made with state=PATH)")
            target = self.state_path
        else:
            target = _state_path("path", path)
        self._core.save_state(target)

    def load_state(self, path: Union[str, "os.PathLike[str]"]) -> dict[str, int]:
        """Replace what ``chat`` keeps with a state file's, after checking all of it: a file that
        is damaged, truncated, of another format version, or written for another model, projector
        or context settings raises ``StateFileError`` and the cache stays as it was. A continued
        conversation then gives the tokens it would have given had the process never stopped,
        and its step 1 evaluates only the new turn. Returns the cache's sizes after the load."""
        return self._core.load_state(_state_path("path", path))

    @property
    def judged_by(self) -> str:
        """Who judges step 2: "self" (the vision model), or the guard model's file name."""
        return self._core.judge_model

    @property
    def parallel(self) -> int:
        """How many calls run together (1: one at a time)."""
        return self._core.parallel

    @property
    def config(self) -> _core.EcsoConfig:
        """A copy of this session's configuration."""
        return self._core.config

    def run(
        self,
        image: ImageInput,
        query: str,
        *,
        max_tokens: int = 512,
        on_token: Optional[Callable[[str], object]] = None,
        on_progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        force_verdict: Optional[bool] = None,
    ) -> _core.EcsoResult:
        """The ECSO request. ``on_token(piece)`` receives the final answer as it is decided: the
        first answer is held back until the judge has spoken (then delivered at once on the safe
        path); on the unsafe path the eyes-closed answer streams as it is generated. Each step's
        generation is capped by the room left in the context (its ``stop_reason`` says
        ``length``); a request whose steps cannot fit at all raises ``ContextOverflowError``
        before step 1. ``force_verdict`` (True: unsafe, False: safe) forces this call's branch in
        place of ``EcsoConfig.verdict_override`` (benchmarks that mix both in one session)."""
        force = optional_bool_arg("force_verdict", force_verdict)
        return self._request(lambda *a, **k: self._core.run(*a, **k, force_verdict=force), image, query, max_tokens,
                             on_token, on_progress, cancel)

    def answer(
        self,
        image: ImageInput,
        query: str,
        *,
        max_tokens: int = 512,
        on_token: Optional[Callable[[str], object]] = None,
        on_progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> _core.EcsoResult:
        """Step 1 only: the direct, unprotected answer (for comparison)."""
        return self._request(self._core.answer, image, query, max_tokens, on_token, on_progress, cancel)

    def _request(self, call: Callable[..., _core.EcsoResult], image: ImageInput, query: str, max_tokens: object,
                 on_token: object, on_progress: object, cancel: object) -> _core.EcsoResult:
        """Checks every argument before any work, then runs `call` (the core's run or answer)."""
        max_tokens = _max_tokens(max_tokens)
        on_token = callable_arg("on_token", on_token)
        on_progress = callable_arg("on_progress", on_progress)
        cancel = _cancel(cancel)
        query_text = _text(query, "query")
        pixels = load_rgb(image, max_pixels=self._core.config.max_image_pixels)
        return call(pixels.data, pixels.width, pixels.height, query_text, max_tokens=max_tokens, on_text=on_token,
                    on_progress=on_progress, cancel=cancel)

    def judge(
        self,
        image: ImageInput,
        query: str,
        response: str,
        *,
        on_progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> _core.EcsoResult:
        """Step 2 alone: does the model judge `response` (to `query` about `image`) harmful?
        ``r.unsafe`` and ``r.verdict_text`` give the verdict; verdict_override does not apply."""
        on_progress = callable_arg("on_progress", on_progress)
        cancel = _cancel(cancel)
        query_text, response_text = _text(query, "query"), _text(response, "response")
        pixels = load_rgb(image, max_pixels=self._core.config.max_image_pixels)
        return self._core.judge(pixels.data, pixels.width, pixels.height, query_text, response_text,
                                on_progress=on_progress, cancel=cancel)

    def stream(self, image: ImageInput, query: str, *, max_tokens: int = 512,
               on_progress: Optional[ProgressCallback] = None) -> "EcsoStream":
        """Iterator form of ``run(on_token=...)``: yields text pieces of the final answer;
        ``.result`` holds the EcsoResult once iteration ends."""
        max_tokens = _max_tokens(max_tokens)
        on_progress = callable_arg("on_progress", on_progress)
        pixels = load_rgb(image, max_pixels=self._core.config.max_image_pixels)
        query_text = _text(query, "query")
        return EcsoStream(lambda on_text, cancel: self._core.run(
            pixels.data, pixels.width, pixels.height, query_text, max_tokens=max_tokens, on_text=on_text,
            on_progress=on_progress, cancel=cancel))

    def chat(
        self,
        messages: Sequence[Any],
        *,
        max_tokens: int = 512,
        on_token: Optional[Callable[[str], object]] = None,
        on_progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        protect: bool = True,
    ) -> _core.EcsoResult:
        """ECSO over a whole conversation: OpenAI-style ``messages`` (roles ``system``, ``user``,
        ``assistant``; content a string or a list of text and image parts, see
        ``ecso_edge.messages``). The last message is the user's. Step 1 answers the conversation
        with every image where it was sent; the judge reads the last user message and the answer
        with every image; on the unsafe path each image is captioned for that message
        (``r.captions``) and the conversation is answered again with no image at all. A
        conversation without images is answered directly (``EcsoConfig.judge_text_only`` judges
        it too). ``protect=False`` gives the direct answer.

        The session keeps each conversation's KV cells and image encodings between calls
        (``keep_conversations``, ``conversation_cache_mib``), so the next turn evaluates only what
        is new: ``r.stats["steps"]["answer"]["tokens_reused"]`` and ``r.stats["image_encodes"]``
        show it. See docs/conversations.md."""
        max_tokens = _max_tokens(max_tokens)
        on_token = callable_arg("on_token", on_token)
        on_progress = callable_arg("on_progress", on_progress)
        cancel = _cancel(cancel)
        protect = bool_arg("protect", protect)
        core_messages = to_core_messages(messages, max_pixels=self._core.config.max_image_pixels)
        return self._core.chat(core_messages, max_tokens=max_tokens, on_text=on_token, on_progress=on_progress,
                               cancel=cancel, protect=protect)

    def stream_chat(self, messages: Sequence[Any], *, max_tokens: int = 512,
                    on_progress: Optional[ProgressCallback] = None, protect: bool = True) -> "EcsoStream":
        """Iterator form of ``chat(on_token=...)``: yields pieces of the final answer; ``.result``
        holds the EcsoResult once iteration ends."""
        max_tokens = _max_tokens(max_tokens)
        on_progress = callable_arg("on_progress", on_progress)
        protect = bool_arg("protect", protect)
        core_messages = to_core_messages(messages, max_pixels=self._core.config.max_image_pixels)
        return EcsoStream(lambda on_text, cancel: self._core.chat(
            core_messages, max_tokens=max_tokens, on_text=on_text, on_progress=on_progress, cancel=cancel,
            protect=protect))

    def run_many(
        self,
        items: Sequence[Any],
        *,
        max_tokens: int = 512,
        protect: bool = True,
        on_result: Optional[Callable[[int, Union[_core.EcsoResult, BaseException]], object]] = None,
        cancel: Optional[CancelToken] = None,
    ) -> list[Union[_core.EcsoResult, BaseException]]:
        """Runs every item, up to ``parallel`` at once, and returns their results in input order.

        An item is an ``(image, query)`` pair (``run``; ``protect=False``: ``answer``) or a message
        list (``chat``). Items are read when their turn comes (an image is decoded then, not all at
        the start) and handed out in order as slots free up, at fixed points of the batching, so
        the same items give the same results on every run. An item that fails (a bad image, a
        context overflow) gives its exception in its place and fails nothing else.
        ``on_result(index, result_or_exception)`` is called as each item ends (on a worker
        thread, in completion order); an exception it raises stops the run and is raised here.
        ``cancel`` (or Ctrl-C) stops the whole run: ``CancelledError`` (``KeyboardInterrupt``)."""
        protect = bool_arg("protect", protect)
        max_pixels = self._core.config.max_image_pixels

        def load(i: int, item: Any) -> Any:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], (str, bytes)):
                pixels = load_rgb(item[0], max_pixels=max_pixels)
                return (pixels.data, pixels.width, pixels.height, _text(item[1], f"query of item {i}"), protect, None)
            if isinstance(item, (list, tuple)) and all(isinstance(m, dict) for m in item):
                return (to_core_messages(item, max_pixels=max_pixels), protect)
            raise ConfigError(f"item {i} is neither an (image, query) pair nor a list of messages "
                              f"(got {type(item).__name__})")

        return self._many(items, load, max_tokens, on_result, cancel)

    def judge_many(
        self,
        items: Sequence[tuple[ImageInput, str, str]],
        *,
        on_result: Optional[Callable[[int, Union[_core.EcsoResult, BaseException]], object]] = None,
        cancel: Optional[CancelToken] = None,
    ) -> list[Union[_core.EcsoResult, BaseException]]:
        """``judge`` over ``(image, query, response)`` items, as ``run_many`` runs its items."""
        max_pixels = self._core.config.max_image_pixels

        def load(i: int, item: Any) -> Any:
            if not (isinstance(item, tuple) and len(item) == 3):
                raise ConfigError(f"item {i} must be an (image, query, response) tuple, not {type(item).__name__}")
            pixels = load_rgb(item[0], max_pixels=max_pixels)
            return (pixels.data, pixels.width, pixels.height, _text(item[1], f"query of item {i}"), True,
                    _text(item[2], f"response of item {i}"))

        return self._many(items, load, 1, on_result, cancel)

    def _many(self, items: Sequence[Any], load: Callable[[int, Any], Any], max_tokens: object, on_result: object,
              cancel: object) -> list[Union[_core.EcsoResult, BaseException]]:
        """run_many and judge_many: items read by `load` on the lane that runs them."""
        max_tokens = _max_tokens(max_tokens)
        on_result = callable_arg("on_result", on_result)
        cancel = _cancel(cancel)
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise ConfigError(f"items must be a sequence, not {type(items).__name__}")
        results: list[Union[_core.EcsoResult, BaseException, None]] = [None] * len(items)

        def sink(i: int, value: Union[_core.EcsoResult, BaseException]) -> None:
            results[i] = value
            if on_result is not None:
                on_result(i, value)

        self._core.run_many(len(items), lambda i: load(i, items[i]), sink, max_tokens=max_tokens, cancel=cancel)
        return [r if r is not None else CancelledError("not run") for r in results]

    def engine_stats(self) -> dict[str, float]:
        """What the decoder did over this session's life, so batching can be seen: ``requests``,
        ``decode_calls`` (llama_decode calls), ``batched_tokens`` (tokens evaluated over them),
        ``rounds`` (scheduler rounds; 0 with parallel=1), ``max_in_flight``, ``waiting`` (calls waiting
        for a free slot now), ``parallel``, and where the rounds' time went: ``solo_seconds`` (image
        encodes and other work that runs alone), ``decode_seconds`` (the merged decodes) and
        ``gap_seconds`` (between rounds, waiting for a lane busy with its own work)."""
        return self._core.engine_stats()

    def cache_info(self) -> dict[str, int]:
        """What ``chat`` keeps between calls: ``conversations`` and ``state_bytes`` (their KV
        cells), ``images`` and ``embedding_bytes`` (their encoder output), ``captions``; ``hits``
        and ``misses`` (chat calls that found a saved conversation to continue, or none),
        ``shared_hits`` (of the hits, those that continued another slot's or another session's
        conversation on the same Model) and ``evictions`` (entries dropped to keep the bounds)."""
        return self._core.cache_stats()

    def clear_cache(self) -> None:
        """Forget every kept conversation, image encoding and caption."""
        self._core.clear_cache()

    def cancel(self) -> None:
        """Stop the call in progress, if any (safe from any thread). A call that has not started
        yet is not affected: cancel its own ``CancelToken`` to stop it whenever it runs."""
        self._core.cancel()
