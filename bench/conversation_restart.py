"""A conversation after a process restart (conversation_bench.py --restart): a 6-turn chat with an
image in turns 1 and 4 is built and saved (Session.save_state), then turn 7 is answered in fresh
processes, side by side and interleaved: `cold` prefills the whole history and encodes both
images again (what every peer does after a restart), `restored` loads the state file first
(Session(state=...)). Measured per process, the model already loaded: the time to the first token
of turn 7's answer (the direct answer, on_token's first piece), the state load, and then a second
conversation about the first image (its encode time, 0 when the encoding came from the file).
Also the state file's size and the save time. Target: restored (state load + first token)
<= 0.25x cold.

Each phase runs as `python conversation_restart.py --phase NAME --work DIR ...` in its own process.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import ecso_edge
from ecso_edge import EcsoConfig, Session

FOLLOW_UPS = ["Tell me more about the colours.", "What could it be used for?", "And what is in this one?",
              "How do the two pictures differ?", "Summarise our conversation.", "Which one would you keep?"]
SECOND_IMAGE_TURN = 3  # 0-based: turn 4 sends the second image
TARGET = 0.25


def image_part(png: bytes) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}


def pngs(size: int) -> list[bytes]:
    from PIL import Image
    import io
    import numpy as np

    out = []
    for seed in (0, 1):
        rgb = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def load(args: argparse.Namespace) -> tuple[ecso_edge.Model, dict[str, Any]]:
    config = json.loads(args.config)
    model = ecso_edge.Model(args.model, args.mmproj, n_threads=args.threads, n_ctx=args.n_ctx)
    return model, config


def phase_build(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model, config = load(args)
    first, second = pngs(224)
    session = Session(model, EcsoConfig(**config))
    messages: list[Any] = [{"role": "system", "content": "You are a helpful assistant."},
                           {"role": "user", "content": [image_part(first), {"type": "text", "text": "What is in this picture?"}]}]
    for t in range(6):
        r = session.chat(messages, max_tokens=args.answer_tokens)
        messages.append({"role": "assistant", "content": r.answer})
        text = FOLLOW_UPS[t]
        content = [image_part(second), {"type": "text", "text": text}] if t + 1 == SECOND_IMAGE_TURN else text
        messages.append({"role": "user", "content": content})
    (work / "history.json").write_text(json.dumps(messages))
    t0 = time.perf_counter()
    session.save_state(str(work / "state.ecso"))
    return {"save_s": time.perf_counter() - t0, "state_bytes": (work / "state.ecso").stat().st_size,
            "cache": session.cache_info()}


def first_token(session: Session, messages: list[Any], max_tokens: int) -> tuple[float, Any]:
    t0 = time.perf_counter()
    seen: list[float] = []
    r = session.chat(messages, max_tokens=max_tokens, protect=False,
                     on_token=lambda piece: seen.append(time.perf_counter()) if not seen else None)
    return (seen[0] if seen else time.perf_counter()) - t0, r


def phase_turn7(args: argparse.Namespace, work: Path, restored: bool) -> dict[str, Any]:
    model, config = load(args)
    messages = json.loads((work / "history.json").read_text())
    t0 = time.perf_counter()
    session = Session(model, EcsoConfig(**config), state=str(work / "state.ecso") if restored else None)
    load_s = time.perf_counter() - t0
    if restored and session.state_status != "loaded":
        raise SystemExit(f"the state file was not loaded: {session.state_status}")
    ttft, r = first_token(session, messages, args.answer_tokens)
    step = r.stats["steps"]["answer"]
    # a second conversation about the first image, in the same process
    first_image = messages[1]["content"][0]
    other = session.chat([{"role": "user", "content": [first_image, {"type": "text", "text": "Is it safe?"}]}],
                         max_tokens=4, protect=False)
    return {"load_s": load_s, "first_token_s": ttft, "prefilled": step["tokens_prefilled"],
            "reused": step["tokens_reused"], "image_encodes": r.stats["image_encodes"],
            "tokens": list(r.steps[0].tokens),
            "second_conversation_encode_ms": 1000 * other.stats["steps"]["answer"]["encode_seconds"],
            "second_conversation_image_encodes": other.stats["image_encodes"]}


def spawn(args: argparse.Namespace, work: Path, phase: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", phase, "--work", str(work), "--model", args.model,
           "--mmproj", args.mmproj, "--threads", str(args.threads), "--n-ctx", str(args.n_ctx),
           "--answer-tokens", str(args.answer_tokens), "--config", args.config]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def measure(model: Path, mmproj: Path, threads: int, n_ctx: int, reps: int, work: Path,
            config: dict[str, Any], answer_tokens: int) -> dict[str, Any]:
    args = argparse.Namespace(model=str(model), mmproj=str(mmproj), threads=threads, n_ctx=n_ctx,
                              config=json.dumps(config), answer_tokens=answer_tokens)
    work.mkdir(parents=True, exist_ok=True)
    built = spawn(args, work, "build")
    runs: dict[str, list[dict[str, Any]]] = {"cold": [], "restored": []}
    for _ in range(reps):
        for name in runs:  # interleaved, each in a process of its own
            runs[name].append(spawn(args, work, name))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("load_s", "first_token_s",
                                                                     "second_conversation_encode_ms")}
           for name, rs in runs.items()}
    restored_total = med["restored"]["load_s"] + med["restored"]["first_token_s"]
    ratio = restored_total / med["cold"]["first_token_s"]
    last = {name: {k: v for k, v in rs[-1].items() if k != "tokens"} for name, rs in runs.items()}
    return {
        "reps": reps, "state_file_bytes": built["state_bytes"], "save_s": built["save_s"], "cache": built["cache"],
        "medians": med, "last_run": last,
        "tokens_identical": all(c["tokens"] == r["tokens"] for c, r in zip(runs["cold"], runs["restored"])),
        "targets": {"restored (state load + first token) / cold first token": {
            "value": ratio, "limit": f"<= {TARGET}", "met": ratio <= TARGET}},
    }


def print_restart(r: dict[str, Any]) -> None:
    m = r["medians"]
    print(f"turn 7 after a restart, medians of {r['reps']} processes each (model load excluded):")
    for name in ("cold", "restored"):
        x = m[name]
        last = r["last_run"][name]
        print(f"  {name:9s} state load {x['load_s'] * 1000:8.1f} ms, first token {x['first_token_s'] * 1000:8.1f} ms, "
              f"prefilled {last['prefilled']}, reused {last['reused']}, image encodes {last['image_encodes']}; "
              f"second conversation on image 1: encode {x['second_conversation_encode_ms']:.1f} ms "
              f"({last['second_conversation_image_encodes']} encodes)")
    print(f"  state file {r['state_file_bytes'] / 2**20:.2f} MiB, saved in {r['save_s'] * 1000:.1f} ms; "
          f"turn 7 tokens identical cold vs restored: {r['tokens_identical']}")
    for label, t in r["targets"].items():
        print(f"  target {label}: {t['value']:.3f} (limit {t['limit']}): {'met' if t['met'] else 'MISSED'}")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=["build", "cold", "restored"], required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--mmproj", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--answer-tokens", type=int, default=32)
    p.add_argument("--config", default="{}")
    args = p.parse_args(argv)
    if args.phase == "build":
        out = phase_build(args, args.work)
    else:
        out = phase_turn7(args, args.work, restored=args.phase == "restored")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
