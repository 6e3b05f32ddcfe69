"""Load benchmark of `ecso-edge serve`: N concurrent clients send ECSO chat requests for a bounded
time; every answer must be a 200 or a 503 (queue full), each 200 must be the answer to its own
request, and the server must stay up. Prints throughput and p50/p95 latency.

    python bench/serve_load.py                              # starts a server on the tiny pair
    python bench/serve_load.py --url http://127.0.0.1:8080  # an already running server

`run_load` is also what tests/test_server_load.py runs."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional

import httpx
import numpy as np
from PIL import Image


def png_data_uri(seed: int = 0, width: int = 48, height: int = 40) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass
class Outcome:
    client: int
    query: str
    status: int  # HTTP status, or 0 for a transport error
    seconds: float
    body: Optional[dict[str, Any]] = None
    retry_after: Optional[str] = None
    error: Optional[str] = None


@dataclass
class LoadReport:
    clients: int
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)

    def of(self, status: int) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    def summary(self) -> dict[str, Any]:
        ok = sorted(o.seconds for o in self.of(200))
        busy = sorted(o.seconds for o in self.of(503))
        return {
            "clients": self.clients,
            "seconds": round(self.seconds, 2),
            "requests": len(self.outcomes),
            "ok": len(ok),
            "busy_503": len(busy),
            "other": len(self.outcomes) - len(ok) - len(busy),
            "throughput_rps": round(len(ok) / self.seconds, 2) if self.seconds else 0.0,
            "p50_s": round(_percentile(ok, 50), 3),
            "p95_s": round(_percentile(ok, 95), 3),
            "p50_503_s": round(_percentile(busy, 50), 4),
        }


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), p))


def run_load(url: str, *, clients: int = 50, seconds: float = 10.0, max_tokens: int = 8,
             api_key: Optional[str] = None, timeout_s: float = 120.0) -> LoadReport:
    """Each client loops for `seconds`: one request at a time, a query that names the client and
    the request, so the reply can be matched to the request it answers."""
    image = png_data_uri()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    report = LoadReport(clients=clients, seconds=0.0)
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout_s, headers=headers) as http:
            start.wait()
            n = 0
            while time.perf_counter() < deadline[0]:
                query = f"load request {index}-{n}: what is in this picture?"
                body = {
                    "model": "tiny",
                    "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": image}},
                        {"type": "text", "text": query},
                    ]}],
                }
                t0 = time.perf_counter()
                try:
                    r = http.post("/v1/chat/completions", json=body)
                    outcome = Outcome(index, query, r.status_code, time.perf_counter() - t0,
                                      r.json() if r.headers.get("content-type", "").startswith("application/json")
                                      else None, r.headers.get("retry-after"))
                except httpx.HTTPError as e:
                    outcome = Outcome(index, query, 0, time.perf_counter() - t0, error=repr(e))
                with lock:
                    report.outcomes.append(outcome)
                n += 1
                if outcome.status == 503 and outcome.retry_after:
                    # a polite client waits, but not past the end of the run
                    time.sleep(min(float(outcome.retry_after), max(0.0, deadline[0] - time.perf_counter())) / 4)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    deadline[0] = t_start + seconds
    start.wait()
    for t in threads:
        t.join()
    report.seconds = time.perf_counter() - t_start
    return report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(max_queue: int, threads: int, pair: list[str], n_ctx: int) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecso_edge.cli", "serve", "--port", str(port), "--threads", str(threads),
         "--n-ctx", str(n_ctx), "--max-queue", str(max_queue), "--log-level", "warning", *pair],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not come up in 60 s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=None, help="a running server (default: start one on the tiny pair)")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-queue", type=int, default=8, help="for the server this script starts")
    p.add_argument("--threads", type=int, default=1, help="generation threads of the server this script starts")
    p.add_argument("--model", default=None, help="text GGUF of the server this script starts (default: tiny pair)")
    p.add_argument("--mmproj", default=None)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--timeout", type=float, default=300.0, help="per-request client timeout, seconds")
    p.add_argument("--json", default=None, help="write the summary here")
    args = p.parse_args()
    proc = None
    url = args.url
    if url is None:
        pair = ["--model", args.model, "--mmproj", args.mmproj] if args.model else []
        proc, url = _start_server(args.max_queue, args.threads, pair, args.n_ctx)
    try:
        report = run_load(url, clients=args.clients, seconds=args.seconds, max_tokens=args.max_tokens,
                          timeout_s=args.timeout)
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            health = json.load(r)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    summary = report.summary()
    summary["server"] = {k: health[k] for k in ("accepted", "completed", "rejected", "failed", "cancelled", "dropped")}
    summary["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
    summary["model"] = os.path.basename(args.model) if args.model else "shipped tiny pair"
    summary["max_tokens"] = args.max_tokens
    summary["max_queue"] = args.max_queue if args.url is None else None
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    ids = [o.body["id"] for o in report.of(200) if o.body]
    bad = (summary["other"] > 0 or len(set(ids)) != len(ids)
           or any(o.body is None or o.body["ecso"]["query"] != o.query for o in report.of(200)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
