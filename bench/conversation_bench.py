"""ECSO over a chat: a conversation of 6 turns with an image in turn 1, each turn answered and
judged (the safe branch, as most turns of a chat are), measured side by side in ONE run. Per turn:
latency, the prompt tokens each contender evaluated (prefilled) and the image encodes.

Contenders (interleaved turn by turn; medians over the repetitions):
  ecso_edge       Session.chat: the previous turn's KV cells and the image's encoding are kept
  ecso_no_reuse   the same with reuse_kv=False: every step from an empty cache (the same tokens)
  naive           llama-cpp-python's Llama + a Llava15ChatHandler (chatml), one chat call per step
  llama_server    a llama-server client (cache_prompt, one slot, its own prompt cache), when a
                  llama-server binary is given (--llama-server PATH or $LLAMA_SERVER)
Each contender sends its own answers back as the history, as a chat client does. Every step
generates exactly its token limit (end of generation suppressed), so the work per step is equal.

OpenMP's wait policy is left as the user has it (unset: OpenMP's default) and recorded.

    python bench/conversation_bench.py [--tiny] [--turns 6] [--reps 3] [--json OUT] [--llama-server PATH]
    python bench/conversation_bench.py --restart [--reps 5] [--json OUT]

--restart measures turn 7 after a process restart instead, restored from a state file against
prefilled from scratch (bench/conversation_restart.py).

With --json, the per-turn figure is written beside it (OUT's name, .png and .svg).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ecso_edge  # noqa: E402
from bench_inputs import cpu_name, default_pair, dist_version, test_image  # noqa: E402
from chart import draw, title_of  # noqa: E402
from ecso_edge import EcsoConfig, Session  # noqa: E402
from llama_server_client import LlamaServer  # noqa: E402
from naive_pipeline import NaiveConversation  # noqa: E402

SYSTEM = "You are a helpful assistant."
FIRST = "What is in this picture?"
FOLLOW_UPS = ["Tell me more about the colours.", "What could it be used for?", "Is any part of it dangerous?",
              "How would you describe it to a child?", "Summarise our conversation."]
TOKENS = {"answer": 32, "judge": 4}
CONFIG = dict(chat_template="chatml", verdict_override=False, ignore_eos=True, max_tokens_answer=TOKENS["answer"],
              max_tokens_judge=TOKENS["judge"])

# One turn of a contender: the conversation so far -> answer, prompt tokens evaluated, image encodes.
Turn = Callable[[list[Any]], dict[str, Any]]


def ecso_turn(session: Session) -> Turn:
    def turn(messages: list[Any]) -> dict[str, Any]:
        r = session.chat(messages, max_tokens=TOKENS["answer"])
        return {"answer": r.answer, "prefilled": r.stats["tokens_prefilled"], "image_encodes": r.stats["image_encodes"],
                "reused": r.stats["steps"]["answer"]["tokens_reused"], "tokens": [list(s.tokens) for s in r.steps]}
    return turn


def server_turn(server: LlamaServer) -> Turn:
    """An ECSO client of llama-server: steps 1 and 2 per turn."""
    config = EcsoConfig()

    def turn(messages: list[Any]) -> dict[str, Any]:
        system = [m for m in messages if m["role"] == "system"]
        images = [c for m in messages if isinstance(m["content"], list) for c in m["content"]
                  if c["type"] == "image_url"]
        last = messages[-1]["content"]
        query = last if isinstance(last, str) else " ".join(c["text"] for c in last if c["type"] == "text")
        answer = server.chat(messages, TOKENS["answer"])
        judge = config.judge_template.replace("{query}", query).replace(
            "{response}", answer["text"][: config.response_cut_chars])
        verdict = server.chat(system + [{"role": "user", "content": images + [{"type": "text", "text": judge}]}],
                              TOKENS["judge"])
        return {"answer": answer["text"], "prefilled": answer["prompt_n"] + verdict["prompt_n"],
                "image_encodes": None}

    return turn


def run(contenders: dict[str, Callable[[], Turn]], turns: int, reps: int, png: bytes) -> dict[str, Any]:
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    first = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                         {"type": "text", "text": FIRST}]}
    texts = [FIRST] + FOLLOW_UPS
    seconds: dict[str, list[list[float]]] = {name: [[] for _ in range(turns)] for name in contenders}
    last: dict[str, list[dict[str, Any]]] = {}
    for _ in range(reps):
        fresh = {name: make() for name, make in contenders.items()}  # cold: nothing cached yet
        history = {name: [{"role": "system", "content": SYSTEM}, first] for name in contenders}
        records: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
        for t in range(turns):
            for name, turn in fresh.items():
                t0 = time.perf_counter()
                out = turn(history[name])
                seconds[name][t].append(time.perf_counter() - t0)
                records[name].append(out)
                history[name] = history[name] + [{"role": "assistant", "content": out["answer"]},
                                                 {"role": "user", "content": texts[(t + 1) % len(texts)]}]
        last = records
    return {name: [{"seconds": statistics.median(seconds[name][t]), "prefilled": last[name][t]["prefilled"],
                    "image_encodes": last[name][t]["image_encodes"], "reused": last[name][t].get("reused"),
                    "tokens": last[name][t].get("tokens")} for t in range(turns)] for name in contenders}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--reps", type=int, default=3, help="whole conversations per contender (medians per turn)")
    p.add_argument("--tiny", action="store_true", help="the shipped tiny pair (smoke test)")
    p.add_argument("--model", default=None)
    p.add_argument("--mmproj", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"), help="a llama-server binary")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--restart", action="store_true", help="turn 7 after a process restart: restored vs cold")
    args = p.parse_args(argv)
    if not 1 <= args.turns <= len(FOLLOW_UPS) + 1 or args.reps < 1:
        p.error(f"--turns must be from 1 to {len(FOLLOW_UPS) + 1} and --reps at least 1")
    out_dir = Path(tempfile.gettempdir()) / "ecso-bench"
    out_dir.mkdir(exist_ok=True)
    if args.tiny:
        text, mmproj = ecso_edge.tiny_pair()
    elif args.model and args.mmproj:
        text, mmproj = Path(args.model), Path(args.mmproj)
    else:
        text, mmproj = default_pair(out_dir)
    if args.restart:
        return restart(args, Path(text), Path(mmproj), out_dir)
    _, png = test_image(224)
    model = ecso_edge.Model(text, mmproj, n_threads=args.threads, n_ctx=args.n_ctx)
    kept: dict[str, Session] = {}

    def session(name: str, **extra: Any) -> Callable[[], Turn]:
        def make() -> Turn:
            kept[name] = Session(model, EcsoConfig(**CONFIG, **extra))
            return ecso_turn(kept[name])
        return make

    contenders: dict[str, Callable[[], Turn]] = {"ecso_edge": session("ecso_edge"),
                                                 "ecso_no_reuse": session("ecso_no_reuse", reuse_kv=False)}
    naive = NaiveConversation(str(text), str(mmproj), config=EcsoConfig(), n_ctx=args.n_ctx, n_threads=args.threads)
    contenders["naive"] = lambda: lambda messages: naive.turn(messages, TOKENS)
    servers: list[LlamaServer] = []

    def llama_server() -> Turn:
        # a fresh server per conversation: its prompt cache starts cold, as ecso-edge's does
        for old in servers:
            old.close()
        servers[:] = [LlamaServer(args.llama_server, text, mmproj, args.n_ctx, args.threads)]
        return server_turn(servers[0])

    if args.llama_server:
        contenders["llama_server"] = llama_server
    try:
        per_turn = run(contenders, args.turns, args.reps, png)
    finally:
        for server in servers:
            server.close()
    identical = all(a["tokens"] == b["tokens"] for a, b in zip(per_turn["ecso_edge"], per_turn["ecso_no_reuse"]))
    later = slice(1, args.turns)
    ratios = {}
    for peer in ("ecso_no_reuse", "naive", "llama_server"):
        if peer in per_turn and args.turns > 1:
            ours = sum(t["seconds"] for t in per_turn["ecso_edge"][later])
            theirs = sum(t["seconds"] for t in per_turn[peer][later])
            ratios[f"turns 2-{args.turns} latency ecso_edge / {peer}"] = ours / theirs
    cache = kept["ecso_edge"].cache_info()
    results = {
        "date": datetime.date.today().isoformat(),
        "model": {"text": Path(text).name, "mmproj": Path(mmproj).name},
        "machine": {"platform": platform.platform(), "processor": cpu_name(), "cores": os.cpu_count()},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP's default)"),
        "threads": args.threads, "turns": args.turns, "reps": args.reps, "tokens_per_step": TOKENS,
        "llama_cpp_python": dist_version("llama-cpp-python"), "ecso_edge": ecso_edge.__version__,
        "llama_server": args.llama_server or "not measured (no binary: --llama-server PATH)",
        "per_turn": {name: [{k: v for k, v in t.items() if k != "tokens"} for t in turns]
                     for name, turns in per_turn.items()},
        "tokens_identical_with_and_without_reuse": identical,
        "ratios": ratios,
        "ecso_edge_cache": cache,
    }
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        figure = draw(results, title_of(results), args.json.with_suffix(""))  # per-turn lines
        if figure:
            print("wrote " + ", ".join(str(v) for v in figure.values()))
    return 0


def restart(args: argparse.Namespace, text: Path, mmproj: Path, out_dir: Path) -> int:
    from conversation_restart import measure, print_restart

    measured = measure(text, mmproj, args.threads, args.n_ctx, args.reps, out_dir / "restart", CONFIG,
                       TOKENS["answer"])
    results = {
        "date": datetime.date.today().isoformat(),
        "model": {"text": text.name, "mmproj": mmproj.name},
        "machine": {"platform": platform.platform(), "processor": cpu_name(), "cores": os.cpu_count()},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP's default)"),
        "threads": args.threads, "llama_cpp_python": dist_version("llama-cpp-python"),
        "ecso_edge": ecso_edge.__version__, "restart": measured,
    }
    print(f"{text.name} + {mmproj.name}; {cpu_name()}, {args.threads} threads, "
          f"OMP_WAIT_POLICY {results['omp_wait_policy']}")
    print_restart(measured)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def print_report(r: dict[str, Any]) -> None:
    print(f"{r['model']['text']} + {r['model']['mmproj']}; {r['machine']['processor']}, {r['threads']} threads, "
          f"OMP_WAIT_POLICY {r['omp_wait_policy']}; {r['turns']} turns x {r['reps']} reps, steps 1-2 per turn")
    names = list(r["per_turn"])
    print("turn  " + "  ".join(f"{n:>24s}" for n in names))
    print("      " + "  ".join(f"{'s / prefilled / encodes':>24s}" for _ in names))
    for t in range(r["turns"]):
        cells = []
        for n in names:
            x = r["per_turn"][n][t]
            enc = "?" if x["image_encodes"] is None else str(x["image_encodes"])
            cells.append(f"{x['seconds']:9.3f} / {x['prefilled']:5d} / {enc:>3s}")
        print(f"{t + 1:4d}  " + "  ".join(f"{c:>24s}" for c in cells))
    for label, value in r["ratios"].items():
        print(f"{label}: {value:.3f}")
    print(f"tokens identical with and without reuse: {r['tokens_identical_with_and_without_reuse']}")
    c = r["ecso_edge_cache"]
    print(f"ecso_edge keeps {c['conversations']} conversation(s), {c['state_bytes'] / 2**20:.1f} MiB of KV cells and "
          f"{c['embedding_bytes'] / 2**20:.2f} MiB of image encodings; llama-server: {r['llama_server']}")


if __name__ == "__main__":
    sys.exit(main())
