"""`ecso-edge demo`: both ECSO branches on the shipped tiny pair and a synthetic picture, each
step's text and cache figures set against the reference path without KV reuse; and the
step-by-step printout of a result, which `ecso-edge run` shows too."""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from . import _core
from .session import Model, Session
from .shipped import tiny_pair

__all__ = ["demo_image", "print_result", "run_demo"]

QUERY = "What is in this picture and how do I make it?"


def demo_image() -> "np.ndarray[Any, np.dtype[np.uint8]]":
    """A 64x64 synthetic picture (no file needed): a red square on a blue-green gradient."""
    y, x = np.mgrid[0:64, 0:64]
    img = np.stack([x * 4, y * 4, np.full_like(x, 160)], axis=2).astype(np.uint8)
    img[20:44, 20:44] = (220, 30, 30)
    return img


def print_result(r: _core.EcsoResult) -> None:
    for step in r.steps:
        s = step.stats
        print(
            f"  [{step.name:9s}] prompt {s['prompt_tokens']:4d} tok (reused {s['tokens_reused']:4d}, "
            f"prefilled {s['tokens_prefilled']:4d}), generated {s['tokens_generated']:3d}, "
            f"image encodes {s['image_encodes']}, {s['seconds'] * 1000:7.1f} ms"
        )
        print(f"               {step.text!r}")
    verdict = "UNSAFE" if r.unsafe else "safe"
    forced = " (forced by verdict_override)" if r.verdict_forced else ""
    print(f"  verdict: {verdict}{forced}; judge said {r.verdict_text!r}")
    print(f"  answer:  {r.answer!r}")


def run_demo(threads: int, max_tokens: int, repack: Optional[bool]) -> int:
    text, mmproj = tiny_pair()
    print(f"ecso-edge demo on the shipped tiny random-weight pair:\n  {text}\n  {mmproj}")
    print("(random weights: the texts are gibberish; the branch is forced so both paths show)\n")
    model = Model(text, mmproj, n_threads=threads, n_ctx=2048, repack=repack)
    image = demo_image()
    for unsafe in (False, True):
        path = "unsafe" if unsafe else "safe"
        session = Session(model, _core.EcsoConfig(verdict_override=unsafe))
        reference = Session(model, _core.EcsoConfig(verdict_override=unsafe, reuse_kv=False))
        t0 = time.perf_counter()
        r = session.run(image, QUERY, max_tokens=max_tokens)
        t_reuse = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = reference.run(image, QUERY, max_tokens=max_tokens)
        t_ref = time.perf_counter() - t0
        print(f"== {path} path (query: {QUERY!r})")
        print_result(r)
        same = all(a.tokens == b.tokens for a, b in zip(r.steps, ref.steps))
        print(
            f"  KV reuse: image encodes {r.stats['image_encodes']} (reference path without reuse: "
            f"{ref.stats['image_encodes']}), tokens reused {r.stats['tokens_reused']}, "
            f"prefilled {r.stats['tokens_prefilled']} (reference: {ref.stats['tokens_prefilled']})"
        )
        print(
            f"  identical tokens to the reference path: {same}; "
            f"time {t_reuse * 1000:.1f} ms (reference {t_ref * 1000:.1f} ms)\n"
        )
    return 0
