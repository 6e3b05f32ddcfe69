"""Many ECSO requests at once: throughput (requests/s), p50/p95 latency and generated tokens/s at
1, 2, 4 and 8 concurrent requests, half of them forced unsafe, for ecso-edge parallel=1 (calls
wait for each other), ecso-edge parallel=N and, given a binary, llama-server -np N driven by N
concurrent ECSO clients (continuous batching, cache_prompt). Each contender runs in a process of
its own. Also the agreement of every step's tokens with parallel=1, and the decode cost at batch
1, 2, 4, 8 from the same run (the cost model's batching bound).

    python bench/parallel_bench.py [--quick] [--json OUT] [--llama-server PATH] [--model T --mmproj P]

Not a timed test: it prints and records what it measured; the targets are computed and shown
met or missed."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WORKLOADS = {  # tokens per step: answer / judge / caption / text_only
    "decode-heavy": {"answer": 128, "judge": 4, "caption": 64, "text_only": 128},
    "quick": {"answer": 32, "judge": 4, "caption": 16, "text_only": 32},
}
TARGETS = [  # (name, what, limit, higher is better)
    ("throughput_vs_p1", "ecso_p4 throughput / ecso_p1 throughput", 1.2, True),
    ("throughput_vs_llama_server", "ecso_p4 throughput / llama_server_np4 throughput", 1.10, True),
    ("p95_vs_llama_server", "ecso_p4 p95 / llama_server_np4 p95", 1.0, False),
    ("rss_per_slot_vs_kv", "|peak RSS growth per extra slot / one slot's KV cells - 1|", 0.10, False),
]


def kv_bytes_per_slot(text_model: str, n_ctx: int) -> int:
    """One slot's K and V cells (f16, every layer), from the text GGUF's header: what a slot adds."""
    import gguf

    reader = gguf.GGUFReader(text_model)

    def value(key: str) -> int:
        field = reader.get_field(key)
        if field is None:
            raise KeyError(key)
        return int(field.parts[field.data[0]][0])

    arch = bytes(reader.get_field("general.architecture").parts[-1]).decode()
    layers = value(f"{arch}.block_count")
    heads = value(f"{arch}.attention.head_count")
    kv_heads = value(f"{arch}.attention.head_count_kv") if reader.get_field(f"{arch}.attention.head_count_kv") else heads
    try:
        head_dim = value(f"{arch}.attention.key_length")
    except KeyError:
        head_dim = value(f"{arch}.embedding_length") // heads
    cells = (n_ctx + 255) // 256 * 256
    return 2 * layers * kv_heads * head_dim * 2 * cells


def queries(n: int) -> list[str]:
    return [f"Describe what is shown here, part {i}, in detail." for i in range(n)]


def config_for(tokens: dict[str, int]) -> Any:
    from ecso_edge import EcsoConfig

    return EcsoConfig().replace(max_tokens_answer=tokens["answer"], max_tokens_judge=tokens["judge"],
                                max_tokens_caption=tokens["caption"], max_tokens_text_only=tokens["text_only"],
                                ignore_eos=True)


def run_clients(n: int, concurrency: int, one: Any) -> tuple[float, list[float]]:
    """`concurrency` client threads taking requests 0..n-1 in turn: the wall time and each
    request's latency."""
    latency = [0.0] * n
    next_i = [0]
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= n:
                return
            t0 = time.perf_counter()
            one(i)
            latency[i] = time.perf_counter() - t0

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latency


def worker_ecso(args: argparse.Namespace) -> dict[str, Any]:
    """One contender: `concurrency` client threads, each sending its share of the requests."""
    import ecso_edge
    from bench_inputs import image_variant

    tokens = WORKLOADS[args.workload]
    model = ecso_edge.Model(args.model, args.mmproj, n_threads=args.threads, n_ctx=args.n_ctx)
    session = ecso_edge.Session(model, config_for(tokens), parallel=args.parallel)
    n = args.requests
    images = [image_variant(args.image_size, i)[0] for i in range(n)]
    qs = queries(n)
    session.run(images[0], "warm up", max_tokens=4)
    out: list[Any] = [None] * n

    def one(i: int) -> None:
        out[i] = session.run(images[i], qs[i], max_tokens=tokens["answer"], force_verdict=i % 2 == 1)

    stats0 = session.engine_stats()
    wall, latency = run_clients(n, args.concurrency, one)
    stats1 = session.engine_stats()
    generated = sum(len(s.tokens) for r in out for s in r.steps)
    steps = [st for r in out for st in r.stats["steps"].values()]
    decode_s = sum(st["decode_seconds"] for st in steps)
    busy_s = sum(st["seconds"] for st in steps)
    return {"wall_s": wall, "latency_s": latency, "generated_tokens": generated,
            "tokens": [[list(s.tokens) for s in r.steps] for r in out],
            "decode_calls": stats1["decode_calls"] - stats0["decode_calls"],
            "batched_tokens": stats1["batched_tokens"] - stats0["batched_tokens"],
            "max_in_flight": stats1["max_in_flight"], "peak_rss_mb": peak_rss_mb(),
            "decode_share": decode_s / busy_s if busy_s else 0.0,
            # where a parallel session's rounds spent the run's wall time (0 with parallel=1)
            "rounds_s": {k: stats1[f"{k}_seconds"] - stats0[f"{k}_seconds"] for k in ("solo", "decode", "gap")}}


def worker_llama_server(args: argparse.Namespace) -> dict[str, Any]:
    import ecso_edge
    from bench_inputs import image_variant
    from llama_server_client import LlamaServer, ecso_request
    import base64

    tokens = WORKLOADS[args.workload]
    server = LlamaServer(args.llama_server, Path(args.model), Path(args.mmproj), args.n_ctx * args.parallel,
                         args.threads, n_parallel=args.parallel)
    config = ecso_edge.EcsoConfig()
    try:
        n = args.requests
        uris = ["data:image/png;base64," + base64.b64encode(image_variant(args.image_size, i)[1]).decode()
                for i in range(n)]
        qs = queries(n)
        ecso_request(server, config, uris[0], "warm up", {k: 4 for k in tokens}, "direct", None)
        wall, latency = run_clients(
            n, args.concurrency,
            lambda i: ecso_request(server, config, uris[i], qs[i], tokens, "unsafe" if i % 2 else "safe", None))
        per = {"safe": tokens["answer"] + tokens["judge"], "unsafe": sum(tokens.values())}
        generated = sum(per["unsafe" if i % 2 else "safe"] for i in range(n))
        return {"wall_s": wall, "latency_s": latency, "generated_tokens": generated}
    finally:
        server.close()


def worker_cost(args: argparse.Namespace) -> dict[str, Any]:
    """The cost model: one generation round of N requests (N sequences, a token each) at N = 1,
    2, 4, 8, on the same text model and threads."""
    from decode_cost import DecodeBench

    bench = DecodeBench(Path(args.model), args.threads, n_ctx=4096, n_seq=8)
    bench.sequences_ms(1, 2)  # warm-up
    return {"round_ms": {str(n): bench.sequences_ms(n, 10) for n in (1, 2, 4, 8)}}


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(kind: str, args: argparse.Namespace, parallel: int, concurrency: int, workload: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, "--model", args.model, "--mmproj", args.mmproj,
           "--threads", str(args.threads), "--n-ctx", str(args.n_ctx), "--parallel", str(parallel),
           "--concurrency", str(concurrency), "--workload", workload, "--requests", str(args.requests),
           "--image-size", str(args.image_size)]
    if args.llama_server:
        cmd += ["--llama-server", args.llama_server]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"the {kind} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(r: dict[str, Any], n: int) -> dict[str, Any]:
    lat = sorted(r["latency_s"])
    out = {"throughput_rps": n / r["wall_s"], "p50_s": statistics.median(lat),
           "p95_s": lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))],
           "tokens_per_s": r["generated_tokens"] / r["wall_s"]}
    for k in ("decode_calls", "batched_tokens", "max_in_flight", "peak_rss_mb", "decode_share"):
        if k in r:
            out[k] = r[k]
    if r.get("rounds_s") and r["wall_s"] > 0 and any(r["rounds_s"].values()):
        out["round_share"] = {k: v / r["wall_s"] for k, v in r["rounds_s"].items()}
    return out


def agreement(a: dict[str, Any], ref: dict[str, Any]) -> float:
    pairs = [(x, y) for ra, rb in zip(a["tokens"], ref["tokens"]) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / max(1, len(pairs))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the quick workload only, at 1 and 4 concurrent")
    p.add_argument("--targets-only", action="store_true",
                   help="the run the targets are computed on alone: decode-heavy at 4 concurrent")
    p.add_argument("--json", default=None, help="write the run here")
    p.add_argument("--model", default=None)
    p.add_argument("--mmproj", default=None)
    p.add_argument("--llama-server", default=None, help="a llama-server binary (bench/build_llama_server.sh)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rescore", default=None, help="score the runs of a saved JSON again (targets, cost model, chart)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--parallel", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--workload", default="quick", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        workers = {"ecso": worker_ecso, "llama_server": worker_llama_server, "cost": worker_cost}
        result = workers[args.worker](args)
        print(json.dumps(result))
        return 0
    from bench_inputs import default_pair
    from llama_server_client import find_llama_server

    if not args.model:
        out_dir = HERE / "out"
        out_dir.mkdir(exist_ok=True)
        text, mmproj = default_pair(out_dir)
        args.model, args.mmproj = str(text), str(mmproj)
    args.llama_server, server_note = find_llama_server(args.llama_server)
    workloads = ["quick"] if args.quick else ["decode-heavy"] if args.targets_only else ["decode-heavy", "quick"]
    levels = [1, 4] if args.quick else [4] if args.targets_only else [1, 2, 4, 8]
    runs: dict[str, Any] = {}
    if args.rescore:
        saved = json.loads(Path(args.rescore).read_text())
        runs, workloads = saved["runs"], []
        args.quick = saved["head"].startswith("quick")
        args.json = args.json or args.rescore
    for workload in workloads:
        for c in levels:
            key = f"{workload}@{c}"
            p1 = run_worker("ecso", args, 1, c, workload)
            row: dict[str, Any] = {"ecso_p1": summarize(p1, args.requests)}
            if c > 1:
                pn = run_worker("ecso", args, c, c, workload)
                row[f"ecso_p{c}"] = summarize(pn, args.requests)
                row[f"ecso_p{c}"]["agreement"] = agreement(pn, p1)
                if args.llama_server:
                    row[f"llama_server_np{c}"] = summarize(run_worker("llama_server", args, c, c, workload),
                                                           args.requests)
            runs[key] = row
            print(key, json.dumps(row), flush=True)
    head_key = "quick@4" if args.quick else "decode-heavy@4"
    head = runs[head_key]
    top = {name: {k: v[name] for k, v in head.items() if name in v}
           for name in ("throughput_rps", "p95_s", "agreement")}
    targets = []
    p4, p1, ls = head.get("ecso_p4"), head["ecso_p1"], head.get("llama_server_np4")
    values = {"throughput_vs_p1": p4["throughput_rps"] / p1["throughput_rps"] if p4 else None,
              "throughput_vs_llama_server": p4["throughput_rps"] / ls["throughput_rps"] if p4 and ls else None,
              "p95_vs_llama_server": p4["p95_s"] / ls["p95_s"] if p4 and ls else None,
              "rss_per_slot_vs_kv": abs((p4["peak_rss_mb"] - p1["peak_rss_mb"]) / 3 * 2**20
                                        / kv_bytes_per_slot(args.model, args.n_ctx) - 1) if p4 else None}
    for name, what, limit, higher in TARGETS:
        v = values[name]
        met = None if v is None else (v >= limit if higher else v <= limit)
        targets.append({"name": name, "what": what, "limit": limit, "higher_is_better": higher, "value": v,
                        "met": met})
    # The cost model: a round of N generating requests costs round_ms[N]; if decoding were all the
    # work, N at once would give N * round_ms[1] / round_ms[N] the throughput. The rest of a request
    # (image encode, prefill) gains nothing from batching: with `decode_share` of parallel=1's time
    # in decoding, Amdahl's bound is 1 / ((1 - share) + share / gain).
    cost = run_worker("cost", args, 1, 1, "quick")["round_ms"]
    bounds: dict[str, Any] = {}
    for key, row in runs.items():
        c = key.split("@")[1]
        if f"ecso_p{c}" in row and c in cost and "decode_share" in row["ecso_p1"]:
            gain = int(c) * cost["1"] / cost[c]
            share = row["ecso_p1"]["decode_share"]
            bound = 1 / ((1 - share) + share / gain)
            reached = row[f"ecso_p{c}"]["throughput_rps"] / row["ecso_p1"]["throughput_rps"]
            bounds[key] = {"decode_gain": gain, "decode_share": share, "bound": bound, "reached": reached}
            print(f"cost model {key}: decode gain {gain:.2f}, decode share {share:.2f}, bound {bound:.2f}x, "
                  f"reached {reached:.2f}x", flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "files": {"model": args.model, "mmproj": args.mmproj},
              "kv_mb_per_slot": kv_bytes_per_slot(args.model, args.n_ctx) / 2**20,
              "threads": args.threads, "requests": args.requests, "omp_wait_policy":
              os.environ.get("OMP_WAIT_POLICY", "unset (the default)"), "llama_server": server_note,
              "head": head_key, **top, "targets": targets, "round_ms": cost, "cost_model": bounds, "runs": runs}
    print("\ntargets at", head_key, "on", Path(args.model).name, "+", Path(args.mmproj).name)
    for t in targets:
        shown = "not measured" if t["value"] is None else f"{t['value']:.3f}"
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        print(f"  {t['what']}: {shown} ({'>=' if t['higher_is_better'] else '<='} {t['limit']}) {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        from chart import draw, title_of

        paths = draw(report, title_of(report), Path(args.json).with_suffix(""))
        if paths:
            print("wrote " + ", ".join(str(v) for v in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
