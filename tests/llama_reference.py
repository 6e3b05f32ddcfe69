"""llama.cpp's own evaluation of a prompt, for checking ecso-edge against it: the prompt's parts go
through `mtmd_tokenize_from_parts` and `mtmd_helper_eval_chunks` (the helper llama.cpp's own tools
use) into a fresh context, then greedy decoding token by token, all through llama-cpp-python's
ctypes bindings. Reuse-on versus reuse-off equality cannot see a mistake made the same way on both
paths (all slices of an image given one slice's embeddings, say); this can.

The context is set up as ecso-edge's sessions are (4 sequences, one unified KV cache, the same
batch size and threads), so the numbers are computed by the same kernels."""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path
from typing import Iterator, Optional

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np


@contextlib.contextmanager
def finite_heap_garbage() -> Iterator[None]:
    """Pixtral's graph reads a tensor it never initialises (see csrc/ecso/image_embeddings.hpp), so
    the reference would answer from NaN whenever mtmd's compute buffer is allocated on recycled
    heap memory that held a NaN pattern. glibc's M_PERTURB fills what malloc hands out (and what
    is freed) with a byte pattern; 0xFE and 0x01 bytes are finite floats, so the reference computes
    what llama.cpp means to. Elsewhere than glibc this does nothing."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        yield
        return
    M_PERTURB = -6
    mallopt(M_PERTURB, 1)
    try:
        yield
    finally:
        mallopt(M_PERTURB, 0)


class LlamaReference:
    def __init__(self, text_model: Path, mmproj: Path, *, n_ctx: int, n_batch: int = 512, n_threads: int = 1) -> None:
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(text_model).encode(), mparams)
        assert self.model, text_model
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        cparams = mtmd.mtmd_context_params_default()
        cparams.use_gpu = False
        cparams.print_timings = False
        cparams.warmup = False
        cparams.n_threads = n_threads
        self.mtmd = mtmd.mtmd_init_from_file(str(mmproj).encode(), self.model, cparams)
        assert self.mtmd, mmproj
        self.n_ctx, self.n_batch, self.n_threads = n_ctx, min(n_batch, n_ctx), n_threads

    def frame(self, system: str, content: str) -> tuple[str, str]:
        """llama.cpp's own chat-template application (llama_chat_apply_template with the text GGUF's
        template, vicuna where it has none, as LLaVA-1.5's is) to a system message (none when
        empty) and a user message `content`: the prompt's text before and after that content."""
        tmpl = llama_cpp.llama_model_chat_template(self.model, None) or b"vicuna"
        turns = ([(b"system", system.encode())] if system else []) + [(b"user", content.encode())]
        chat = (llama_cpp.llama_chat_message * len(turns))(*[llama_cpp.llama_chat_message(r, c) for r, c in turns])
        n = llama_cpp.llama_chat_apply_template(tmpl, chat, len(turns), True, None, 0)
        assert n > 0, tmpl
        buf = ctypes.create_string_buffer(n + 1)
        assert llama_cpp.llama_chat_apply_template(tmpl, chat, len(turns), True, buf, n + 1) == n
        text = buf.raw[:n].decode()
        assert text.count(content) == 1, (text, content)
        head, tail = text.split(content)
        return head, tail

    def close(self) -> None:
        mtmd.mtmd_free(self.mtmd)
        llama_cpp.llama_model_free(self.model)

    def greedy(self, parts: list[tuple[str, bool]], image: Optional[np.ndarray], image_after: int,
               max_tokens: int) -> list[int]:
        """Greedy tokens for the prompt `parts` ((text, parse_special) in order) with `image`
        inserted after the first `image_after` parts, from an empty context."""
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = self.n_ctx, self.n_batch, self.n_batch, 4
        cp.kv_unified = True
        cp.swa_full = llama_cpp.llama_model_n_swa(self.model) > 0  # as ecso-edge sessions
        cp.n_threads = cp.n_threads_batch = self.n_threads
        cp.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self.model, cp)
        assert ctx
        keep: list[object] = []
        bitmap = None
        try:
            entries: list[mtmd.mtmd_input_part] = []

            def add_text(text: str, special: bool) -> None:
                if not text:
                    return
                raw = text.encode()
                t = mtmd.mtmd_input_text(raw, len(raw), False, special)
                keep.extend([raw, t])
                entries.append(mtmd.mtmd_input_part(ctypes.pointer(t), None))

            def evaluate(n_past: int, add_special: bool, last: bool) -> int:
                array = (ctypes.POINTER(mtmd.mtmd_input_part) * len(entries))(*[ctypes.pointer(e) for e in entries])
                keep.append(array)
                chunks = mtmd.mtmd_input_chunks_init()
                try:
                    assert mtmd.mtmd_tokenize_from_parts(self.mtmd, chunks, array, len(entries), add_special) == 0
                    new_n_past = ctypes.c_int(0)
                    with finite_heap_garbage():  # the image encoder's buffers are allocated in here
                        assert mtmd.mtmd_helper_eval_chunks(self.mtmd, ctx, chunks, n_past, 0, self.n_batch, last,
                                                            ctypes.byref(new_n_past)) == 0
                finally:
                    mtmd.mtmd_input_chunks_free(chunks)
                entries.clear()
                return int(new_n_past.value)

            n_past = 0
            if image is None:
                # ecso-edge evaluates the template head in a batch of its own (its reuse boundary),
                # and batch composition changes the floats: split the reference there too.
                add_text(*parts[0])
                n_past = evaluate(0, True, False)
                parts = parts[1:]
            for text, special in parts[:image_after]:
                add_text(text, special)
            if image is not None:
                pixels = np.ascontiguousarray(image, dtype=np.uint8)
                bitmap = mtmd.mtmd_bitmap_init(pixels.shape[1], pixels.shape[0],
                                               pixels.ctypes.data_as(ctypes.POINTER(ctypes.c_ubyte)))
                entries.append(mtmd.mtmd_input_part(None, bitmap))
            for text, special in parts[image_after:]:
                add_text(text, special)
            n_past = evaluate(n_past, n_past == 0, True)
            tokens: list[int] = []
            pos = n_past
            while len(tokens) < max_tokens:
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(self.n_vocab,))
                token = int(np.argmax(logits))
                if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                    break
                tokens.append(token)
                if len(tokens) == max_tokens or pos >= self.n_ctx:
                    break
                one = (llama_cpp.llama_token * 1)(token)
                assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) == 0
                pos += 1
            return tokens
        finally:
            if bitmap is not None:
                mtmd.mtmd_bitmap_free(bitmap)
            llama_cpp.llama_free(ctx)
