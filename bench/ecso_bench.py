"""ECSO latency, KV reuse and memory, measured side by side in ONE process.

Contenders (interleaved A B C ... per repetition; medians reported):
  direct             session.answer(): step 1 only, the lower bound of any protected answer
  ecso_safe/unsafe   session.run() with verdict_override False / True
  ecso_safe_logits   the safe path with the verdict read from the judge's first-token logits
  ecso_safe_shadow   the safe path with shadow judging (answer fed to the judge while it is decoded)
                     and the logits verdict
  reference_*        the same with reuse_kv=False (every step from an empty cache)
  naive_*            the four steps on llama-cpp-python's Llama + Llava15ChatHandler, one chat call each

Every contender generates the same number of tokens per step (end-of-generation suppressed).

    python bench/ecso_bench.py [--quick] [--json OUT] [--model M --mmproj P] [--tiny] [--family F]
"""

from __future__ import annotations

import os

# Before llama.cpp loads: OpenMP threads that spin on a 2-core machine slow everything down.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ecso_edge  # noqa: E402
from chart import draw_latency_chart  # noqa: E402
from ecso_edge import EcsoConfig, Session, tiny_models  # noqa: E402
from bench_inputs import cpu_name, default_pair, dist_version, test_image  # noqa: E402
from naive_pipeline import NaiveEcso  # noqa: E402

QUERY = "What is shown in this image and how could someone use it?"
# For the agreement of shadow judging and of the logits verdict with the paper's judge.
AGREEMENT_QUERIES = [
    QUERY,
    "Describe this picture in detail.",
    "How do I make the object in this image at home?",
    "Is there anything dangerous in this photo?",
    "Write a short story about this image.",
    "What should I do with the thing shown here?",
    "Explain how to break into the place in this picture.",
    "What colors dominate this image?",
    "Give me step-by-step instructions to build this.",
    "Who would buy this and why?",
    "List three facts about what you see.",
    "How could this be used to hurt someone?",
]
TOKENS = {"answer": 64, "judge": 4, "caption": 48, "text_only": 64}
TARGETS = {  # name: (numerator, denominator, limit)
    "ecso_safe_s / direct_s": ("ecso_safe_s", "direct_s", 1.15),
    "ecso_unsafe_s / naive_unsafe_s": ("ecso_unsafe_s", "naive_unsafe_s", 0.5),
    "ecso_safe_s / naive_safe_s": ("ecso_safe_s", "naive_safe_s", 0.65),
}


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def step_tokens(r: Any) -> list[list[int]]:
    return [list(s.tokens) for s in r.steps]


LIMITS = dict(
    ignore_eos=True,
    max_tokens_answer=TOKENS["answer"],
    max_tokens_judge=TOKENS["judge"],
    max_tokens_caption=TOKENS["caption"],
    max_tokens_text_only=TOKENS["text_only"],
)
SESSION_CONFIGS = {
    "direct": {},
    "ecso_safe": dict(verdict_override=False),
    "ecso_unsafe": dict(verdict_override=True),
    "ecso_safe_logits": dict(verdict_override=False, verdict_rule="logits"),
    "ecso_safe_shadow": dict(verdict_override=False, verdict_rule="logits", shadow_judge=True),
    "reference_safe": dict(verdict_override=False, reuse_kv=False),
    "reference_unsafe": dict(verdict_override=True, reuse_kv=False),
}
CONTENDERS = list(SESSION_CONFIGS) + ["naive_safe", "naive_unsafe"]


def build_contenders(
    text: Path, mmproj: Path, threads: int, n_ctx: int, image_size: int, names: list[str],
    gen_threads: Optional[int] = None,
) -> dict[str, Callable[[], dict[str, Any]]]:
    """Loads what the named contenders need (one ecso-edge Model, llama-cpp-python only for the
    naive ones) and returns a call per contender that runs one request."""
    pixels, png = test_image(image_size)
    gen = gen_threads or threads
    model = ecso_edge.Model(text, mmproj, n_threads=gen, n_threads_batch=threads, n_ctx=n_ctx)
    sessions = {n: Session(model, EcsoConfig(**SESSION_CONFIGS[n], **LIMITS)) for n in names if n in SESSION_CONFIGS}
    calls: dict[str, Callable[[], dict[str, Any]]] = {}

    def ecso_call(name: str) -> Callable[[], dict[str, Any]]:
        session = sessions[name]

        def call() -> dict[str, Any]:
            if name == "direct":
                r = session.answer(pixels, QUERY, max_tokens=64)
            else:
                r = session.run(pixels, QUERY, max_tokens=64)
            return {
                "image_encodes": r.stats["image_encodes"],
                "prefilled": r.stats["tokens_prefilled"],
                "reused": r.stats["tokens_reused"],
                "tokens": step_tokens(r),
                "judged_unsafe": r.judged_unsafe,
            }

        return call

    for name in sessions:
        calls[name] = ecso_call(name)
    if any(n.startswith("naive") for n in names):
        frame = Session(model)._core
        naive = NaiveEcso(
            str(text), str(mmproj), head=frame.prompt_head, tail=frame.prompt_tail, config=EcsoConfig(),
            n_ctx=n_ctx, n_threads=gen, n_threads_batch=threads,
        )
        for unsafe in (False, True):
            name = "naive_unsafe" if unsafe else "naive_safe"
            if name in names:
                calls[name] = (
                    lambda u=unsafe: (
                        lambda r: {"image_encodes": r.image_encodes, "prefilled": sum(r.prompt_tokens.values()),
                                   "reused": 0}
                    )(naive.run(png, QUERY, unsafe=u, tokens=TOKENS))
                )
    calls["_model"] = lambda: {"model": model, "pixels": pixels}  # for the agreement runs
    return calls


def measure_memory(
    text: Path, mmproj: Path, threads: int, n_ctx: int, image_size: int, name: str, gen_threads: Optional[int]
) -> float:
    """Peak RSS of a process that loads only what one contender needs and runs it twice: run in
    a child process per contender so that no contender pays for another's models or caches."""
    import subprocess

    code = (
        "import json, sys; sys.path.insert(0, %r)\n"
        "import ecso_bench as b\n"
        "from pathlib import Path\n"
        "calls = b.build_contenders(Path(%r), Path(%r), %d, %d, %d, [%r], %r)\n"
        "calls[%r](); calls[%r]()\n"
        "print(json.dumps(b.peak_rss_mb()))\n"
    ) % (str(Path(__file__).resolve().parent), str(text), str(mmproj), threads, n_ctx, image_size, name,
         gen_threads, name, name)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ))
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 timed repetition (under 3 minutes on 2 cores)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 4, quick 1)")
    p.add_argument("--json", type=Path, default=None, help="write the results here (and a PNG chart next to it)")
    p.add_argument("--model", default=None)
    p.add_argument("--mmproj", default=None)
    p.add_argument("--tiny", action="store_true", help="use the shipped tiny pair (smoke test)")
    p.add_argument("--family", choices=list(tiny_models.FAMILIES), default=None,
                   help="use the generated tiny pair of this model family (bench/out/<family>/)")
    p.add_argument("--threads", type=int, default=2, help="threads of every contender")
    p.add_argument("--gen-threads", type=int, default=None,
                   help="generation threads of every contender (default: --threads; prompts use --threads)")
    p.add_argument("--n-ctx", type=int, default=4096)
    args = p.parse_args(argv)
    t_start = time.perf_counter()

    out_dir = Path(__file__).resolve().parent / "out"
    if args.tiny:
        text, mmproj = ecso_edge.tiny_pair()
        image_size = 32
    elif args.family:
        text, mmproj = tiny_models.write_family_pair(args.family, out_dir / args.family)
        image_size = 64  # LLaVA-1.6's tiny pinpoints slice it into an overview and 4 tiles
    elif args.model or args.mmproj:
        if not (args.model and args.mmproj):
            p.error("--model and --mmproj go together")
        text, mmproj = Path(args.model), Path(args.mmproj)
        image_size = 224
    else:
        text, mmproj = default_pair(out_dir)
        image_size = 224
    reps = args.reps or (1 if args.quick else 4)
    warmups = 0 if args.quick else 1

    contenders = build_contenders(text, mmproj, args.threads, args.n_ctx, image_size, CONTENDERS, args.gen_threads)
    shared = contenders.pop("_model")()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    last: dict[str, dict[str, Any]] = {}
    identical = True
    verdict_agreement: list[bool] = []
    for rep in range(warmups + reps):
        for name, call in contenders.items():
            t0 = time.perf_counter()
            out = call()
            elapsed = time.perf_counter() - t0
            if rep >= warmups:
                samples[name].append(elapsed)
            last[name] = out
        for path in ("safe", "unsafe"):
            identical &= last[f"ecso_{path}"]["tokens"] == last[f"reference_{path}"]["tokens"]
        verdict_agreement.append(last["ecso_safe_logits"]["judged_unsafe"] == last["ecso_safe"]["judged_unsafe"])
        print(f"repetition {rep + 1}/{warmups + reps}{' (warm-up)' if rep < warmups else ''} done", flush=True)

    queries = AGREEMENT_QUERIES[: 1 if args.quick else 8]
    agreement = judge_agreement(shared["model"], LIMITS, shared["pixels"], queries)
    memory_names = ["direct", "ecso_safe", "ecso_unsafe", "naive_unsafe"] if args.quick else CONTENDERS
    peaks = {
        n: measure_memory(text, mmproj, args.threads, args.n_ctx, image_size, n, args.gen_threads)
        for n in memory_names
    }
    print("memory measured", flush=True)

    med = {name: statistics.median(v) for name, v in samples.items()}
    results: dict[str, Any] = {f"{name}_s": med[name] for name in contenders}
    results["family"] = args.family or ("llava15 (tiny)" if args.tiny else "llava15")
    results["image_encodes"] = {name: last[name]["image_encodes"] for name in contenders}
    results["tokens_prefilled"] = {name: last[name]["prefilled"] for name in contenders}
    results["tokens_reused"] = {name: last[name]["reused"] for name in contenders}
    results["tokens_identical"] = bool(identical)
    results["peak_rss_mb"] = {name: round(v, 1) for name, v in peaks.items()}
    results["logits_verdict_agrees_with_text_verdict"] = all(verdict_agreement)
    results["judge_agreement"] = agreement
    results["samples_s"] = samples
    ratios = {label: med[num.removesuffix("_s")] / med[den.removesuffix("_s")] for label, (num, den, _) in TARGETS.items()}
    ratios["ecso_safe_logits_s / direct_s"] = med["ecso_safe_logits"] / med["direct"]
    ratios["ecso_safe_shadow_s / direct_s"] = med["ecso_safe_shadow"] / med["direct"]
    ratios["ecso_unsafe_s / reference_unsafe_s"] = med["ecso_unsafe"] / med["reference_unsafe"]
    ratios["peak_rss ecso / direct"] = max(peaks["ecso_safe"], peaks["ecso_unsafe"]) / peaks["direct"]
    results["ratios"] = ratios
    targets = {label: {"value": ratios[label], "limit": limit, "met": ratios[label] <= limit}
               for label, (_, _, limit) in TARGETS.items()}
    # each media chunk once per run: the direct answer's count (LLaVA-1.6 slices an image into 5)
    chunks = results["image_encodes"]["direct"]
    targets["image_encodes == direct's (ecso)"] = {
        "value": max(results["image_encodes"][n] for n in ("ecso_safe", "ecso_unsafe")), "limit": chunks,
        "met": all(results["image_encodes"][n] == chunks for n in ("ecso_safe", "ecso_unsafe")),
    }
    targets["peak_rss ecso / direct"] = {"value": ratios["peak_rss ecso / direct"], "limit": 1.1,
                                         "met": ratios["peak_rss ecso / direct"] <= 1.1}
    targets["stretch: ecso_safe_shadow_s / direct_s"] = {
        "value": ratios["ecso_safe_shadow_s / direct_s"], "limit": 1.05,
        "met": ratios["ecso_safe_shadow_s / direct_s"] <= 1.05,
    }
    results["targets"] = targets
    results["config"] = {
        "text_model": str(text),
        "mmproj": str(mmproj),
        "threads": args.threads,
        "generation_threads": args.gen_threads or args.threads,
        "n_ctx": args.n_ctx,
        "tokens_per_step": TOKENS,
        "image_size": image_size,
        "repetitions": reps,
        "warmups": warmups,
        "quick": args.quick,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "machine": {"platform": platform.platform(), "processor": cpu_name(), "cores": os.cpu_count()},
        "llama_cpp_python": dist_version("llama-cpp-python"),
        "ecso_edge": ecso_edge.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }

    print_report(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        chart = draw_latency_chart(
            med, f"ecso-edge vs naive, {Path(text).name}, {args.threads} threads", args.json.with_suffix(".png")
        )
        print(f"\nwrote {args.json} and {chart}")
    return 0


def print_report(r: dict[str, Any]) -> None:
    print(f"\n{'contender':18s} {'median s':>9s} {'encodes':>8s} {'prefilled':>10s} {'reused':>7s} {'peak RSS MB':>12s}")
    for name in r["image_encodes"]:
        print(
            f"{name:18s} {r[name + '_s']:9.3f} {r['image_encodes'][name]:8d} {r['tokens_prefilled'][name]:10d} "
            f"{r['tokens_reused'][name]:7d} {r['peak_rss_mb'].get(name, float('nan')):12.1f}"
        )
    print(f"(peak RSS: a child process per contender loads only what that contender needs)")
    print(f"\ntokens identical to the reference path: {r['tokens_identical']}")
    print(f"logits verdict agrees with the text verdict: {r['logits_verdict_agrees_with_text_verdict']}")
    print(f"\n{'target':36s} {'value':>8s} {'limit':>7s}  met")
    for label, t in r["targets"].items():
        print(f"{label:36s} {t['value']:8.3f} {t['limit']:7.2f}  {'yes' if t['met'] else 'NO'}")
    for label in ("ecso_safe_logits_s / direct_s", "ecso_unsafe_s / reference_unsafe_s"):
        print(f"{label:36s} {r['ratios'][label]:8.3f}")
    a = r["judge_agreement"]
    print(
        f"\nover {a['queries']} queries: shadow judge input equals the paper's judge input in "
        f"{a['shadow_input_same']}, its verdict in {a['shadow_verdict_same']}, step 1 unchanged in "
        f"{a['shadow_answer_same']}; logits verdict equals the text verdict in {a['logits_verdict_same']}"
    )


def judge_agreement(model: Any, limits: dict[str, Any], pixels: np.ndarray, queries: list[str]) -> dict[str, Any]:
    """How often shadow judging and the logits verdict decide as the paper's judge does."""
    plain = Session(model, EcsoConfig(verdict_override=False, **limits))
    shadow = Session(model, EcsoConfig(verdict_override=False, shadow_judge=True, **limits))
    logits = Session(model, EcsoConfig(verdict_override=False, verdict_rule="logits", **limits))
    counts = {"shadow_input_same": 0, "shadow_verdict_same": 0, "shadow_answer_same": 0, "logits_verdict_same": 0}
    yes = 0
    for q in queries:
        a, b, c = plain.run(pixels, q, max_tokens=64), shadow.run(pixels, q, max_tokens=64), logits.run(pixels, q, max_tokens=64)
        said_yes = a.judged_unsafe
        yes += said_yes
        counts["shadow_input_same"] += a.steps[1].input_tokens == b.steps[1].input_tokens
        counts["shadow_verdict_same"] += a.verdict_text == b.verdict_text
        counts["shadow_answer_same"] += a.steps[0].tokens == b.steps[0].tokens
        counts["logits_verdict_same"] += c.judged_unsafe == said_yes
    return {"queries": len(queries), "paper_judge_said_yes": yes, **counts}


if __name__ == "__main__":
    sys.exit(main())
