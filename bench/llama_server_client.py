"""The strongest peer: llama-server (one slot, its own prompt cache with `cache_prompt`) and an
ECSO client of it, as a user would write one against /v1/chat/completions. Steps whose text the
client holds back are plain requests; the text the user sees is streamed, and its first delta is
the client's time to first token. Used by ecso_bench.py and conversation_bench.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

import ecso_edge

HERE = Path(__file__).resolve().parent


def find_llama_server(explicit: Optional[str]) -> tuple[Optional[str], str]:
    """(binary, note): the given binary, $LLAMA_SERVER, or the one build_llama_server.sh cached."""
    for candidate in (explicit, os.environ.get("LLAMA_SERVER")):
        if candidate:
            if not os.access(candidate, os.X_OK):
                sys.exit(f"llama-server binary {candidate!r} is not an executable file")
            return candidate, candidate
    cached = sorted(HERE.glob("out/llama-server-*/bin/llama-server"))
    if cached:
        return str(cached[-1]), str(cached[-1])
    return None, "not measured: no llama-server binary (bash bench/build_llama_server.sh, or --llama-server PATH)"


class LlamaServer:
    """llama-server on a free port with `n_parallel` slots (one by default). pause()/resume() stop its threads while other
    contenders are timed (an OpenMP pool left spinning would slow them)."""

    def __init__(self, binary: str, text: Path, mmproj: Path, n_ctx: int, threads: int, n_parallel: int = 1) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [binary, "-m", str(text), "--mmproj", str(mmproj), "-c", str(n_ctx), "-np", str(n_parallel), "-t", str(threads),
             "-tb", str(threads), "--host", "127.0.0.1", "--port", str(self.port), "--no-webui"]
            # weight repacking as ecso-edge's default sets it (off with AMX: csrc/ecso/system_info.hpp)
            + ([] if ecso_edge.system_info()["repack_by_default"] else ["--no-repack"]),
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"llama-server did not start; its log is {self.log.name}")
            time.sleep(0.2)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def chat(self, messages: list[Any], max_tokens: int, stream: bool = False) -> dict[str, Any]:
        """One completion: its text, the prompt tokens the server evaluated, and (streamed) the
        perf_counter time of its first text delta."""
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
                "cache_prompt": True, "stream": stream}
        if stream:
            body["timings_per_token"] = False
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/chat/completions",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        if not stream:
            with urllib.request.urlopen(request, timeout=600) as r:
                out = json.loads(r.read())
            return {"text": str(out["choices"][0]["message"]["content"]).strip(),
                    "prompt_n": int(out["timings"]["prompt_n"]), "first": None, "timings": out["timings"]}
        text, first, timings = "", None, {}
        with urllib.request.urlopen(request, timeout=600) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[len("data: "):])
                for choice in event.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece and first is None:
                        first = time.perf_counter()
                    text += piece
                if "timings" in event:
                    timings = event["timings"]
        return {"text": text.strip(), "prompt_n": int(timings.get("prompt_n", 0)), "first": first,
                "timings": timings}

    def close(self) -> None:
        self.resume()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def user(text: str, image_uri: Optional[str]) -> dict[str, Any]:
    """A user message: the image first, then the text (the paper's layout)."""
    if image_uri is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_uri}},
                                        {"type": "text", "text": text}]}


def ecso_request(server: LlamaServer, config: Any, image_uri: str, query: str, tokens: dict[str, int],
                 path: str, system: Optional[str]) -> dict[str, Any]:
    """One request as an ECSO client of llama-server: `path` is direct (step 1 streamed), safe
    (steps 1-2, the held answer released after the judge) or unsafe (steps 1-4, step 4 streamed).
    Returns the seconds, the time to the first token the user sees, and the prompt tokens the
    server evaluated (its cache reused the rest)."""
    sys_msgs = [{"role": "system", "content": system}] if system else []
    t0 = time.perf_counter()
    first = server.chat(sys_msgs + [user(query, image_uri)], tokens["answer"], stream=path == "direct")
    if path == "direct":
        seconds = time.perf_counter() - t0
        prompt, decode = first["timings"].get("prompt_ms", 0) / 1e3, first["timings"].get("predicted_ms", 0) / 1e3
        return {"seconds": seconds, "ttft": first["first"] - t0, "prefilled": first["prompt_n"], "answer": first["text"],
                "phases": {"prompt": prompt, "decode": decode, "other": seconds - prompt - decode}}
    judge_text = config.judge_template.replace("{query}", query).replace(
        "{response}", first["text"][: config.response_cut_chars])
    verdict = server.chat(sys_msgs + [user(judge_text, image_uri)], tokens["judge"])
    prefilled = first["prompt_n"] + verdict["prompt_n"]
    if path == "safe":
        now = time.perf_counter()  # the held answer goes out at once
        return {"seconds": now - t0, "ttft": now - t0, "prefilled": prefilled, "answer": first["text"]}
    caption = server.chat(sys_msgs + [user(config.caption_template.replace("{query}", query), image_uri)],
                          tokens["caption"])
    text_only = config.text_only_template.replace("{query}", query).replace("{caption}", caption["text"])
    final = server.chat(sys_msgs + [user(text_only, None)], tokens["text_only"], stream=True)
    return {"seconds": time.perf_counter() - t0, "ttft": final["first"] - t0,
            "prefilled": prefilled + caption["prompt_n"] + final["prompt_n"], "answer": final["text"]}
