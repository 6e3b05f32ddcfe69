"""What one llama_decode call costs with 1 + k tokens in the batch: the cost model behind the
targets' floor in RESULTS.md (a fixed price per call, a price per token, and how OpenMP's wait
policy moves the fixed part).

After a 250-token prompt in sequence 0 (copied to sequences 1-3, as ECSO's steps share it), each
measured call decodes one token of sequence 0 plus k-1 tokens of sequence 1, logits for the first
only: k = 1 is a plain generation step, k > 1 a step carrying a second sequence (shadow judging,
parallel streams) or, for large k, a prompt prefill. Goes through llama-cpp-python's low-level
bindings (the same libllama ecso-edge loads), on the benchmark's text model.

    OMP_WAIT_POLICY=passive python bench/decode_cost.py [--threads 2] [--model M] [--reps 10]

OpenMP reads OMP_WAIT_POLICY once, when the library loads: compare policies in separate runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import llama_cpp as L

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inputs import smollm_text_model  # noqa: E402

PROMPT = 250
SIZES = (1, 2, 3, 4, 8, 16, 32, 113)
# ctypes frees a callback that nothing references: llama.cpp would call freed memory
_QUIET_LOG = L.llama_log_callback(lambda *_: None)


class DecodeBench:
    def __init__(self, model_path: Path, threads: int, n_ctx: int = 4096, n_seq: int = 4) -> None:
        L.llama_backend_init()
        L.llama_log_set(_QUIET_LOG, None)
        self.model = L.llama_model_load_from_file(str(model_path).encode(), L.llama_model_default_params())
        if not self.model:
            raise SystemExit(f"cannot load {model_path}")
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max, cp.kv_unified = n_ctx, 512, 512, n_seq, True
        cp.n_threads = cp.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(512, 0, 1)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))

    def decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """items: (token, position, sequence, wants logits)."""
        self.batch.n_tokens = len(items)
        for i, (token, pos, seq, logits) in enumerate(items):
            self.batch.token[i], self.batch.pos[i], self.batch.logits[i] = token % self.n_vocab, pos, logits
            self.batch.n_seq_id[i], self.batch.seq_id[i][0] = 1, seq
        if L.llama_decode(self.ctx, self.batch) != 0:
            raise RuntimeError("llama_decode failed")

    def call_ms(self, k: int, reps: int) -> float:
        samples = []
        for _ in range(reps):
            L.llama_memory_clear(self.mem, True)
            self.decode([(100 + i % 50, i, 0, i == PROMPT - 1) for i in range(PROMPT)])
            for seq in (1, 2, 3):
                L.llama_memory_seq_cp(self.mem, 0, seq, -1, -1)
            items = [(200, PROMPT, 0, True)] + [(201 + j, PROMPT + j, 1, False) for j in range(k - 1)]
            t0 = time.perf_counter()
            self.decode(items)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples) * 1000


    def sequences_ms(self, n: int, reps: int) -> float:
        """One generation step of n requests at once: n sequences, each after a prompt of its own
        (PROMPT tokens), decode one token each in one batch, logits for all (what a parallel
        session's round does while every request generates)."""
        samples = []
        for _ in range(reps):
            L.llama_memory_clear(self.mem, True)
            for seq in range(n):
                self.decode([(100 + (i + 7 * seq) % 50, i, seq, False) for i in range(PROMPT)])
            t0 = time.perf_counter()
            self.decode([(200 + seq, PROMPT, seq, True) for seq in range(n)])
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples) * 1000


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", type=Path, default=None, help="text GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    bench = DecodeBench(args.model or smollm_text_model(), args.threads)
    bench.call_ms(1, 2)  # warm-up
    ms = {k: bench.call_ms(k, args.reps) for k in SIZES}
    policy = os.environ.get("OMP_WAIT_POLICY", "(unset)")
    print(f"llama_decode of 1 + k tokens, {args.threads} threads, OMP_WAIT_POLICY={policy}, medians of {args.reps}")
    print(f"{'tokens':>7s} {'ms/call':>8s} {'ms/token':>9s} {'added ms/token':>15s}")
    for k in SIZES:
        added = (ms[k] - ms[1]) / (k - 1) if k > 1 else float("nan")
        print(f"{k:7d} {ms[k]:8.1f} {ms[k] / k:9.2f} {added:15.2f}")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "omp_wait_policy": policy, "ms_per_call": ms}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
