"""The fuzz worker: a child process that executes fuzz cases one at a time for fuzz_harness.py, so
that a case which crashes or hangs the runtime takes down this process and not pytest.

Protocol: every request (on stdin) and every reply (on the file descriptor that was stdout when
the process started) is a 4-byte big-endian length followed by a pickle. Stdout itself is pointed
at stderr first, so nothing llama.cpp or Python prints can corrupt a reply.

A case is a dict with a "kind":
  gguf:   {"text": path, "mmproj": path}: load the pair, then run both ECSO branches once
  image:  {"image": anything Session.answer accepts, "max_pixels": int or None}
  prompt: {"query": str or bytes, "api": "run" | "answer" | "judge" | "stream", "unsafe": bool,
           "response": str (judge only), "config": dict of EcsoConfig fields}
  option: {"target": "model" | "config" | "session" | "server_options" | "serve_api" | "cli" | "chat" |
           "chat_body", "options": {name: value}, "expect": "valid" | "invalid" | "either", "names": [...]}
           (fuzz_option_inputs.py; run and judged by fuzz_option_runner.py)
  state:  {"state": path, "messages": [...], "unsafe": bool, "parallel": int}: load_state into a new
           session, then continue the conversation the file was written from (fuzz_state_inputs.py)
A reply is {"status": "ok" | "error" | "exception" | "violation", "type": exception class name,
"message": str, "seconds": float}. "error" is a typed EcsoError (the goal for bad input);
"exception" is any other exception class and "violation" a broken invariant (both findings).
A state file that loads and whose turn then ends in a typed error replies with the type
"<class> after loading", so that those are counted apart from the refusals.
An option case may also end in "error" with TypeError/ValueError, an exit status or an HTTP
status, when that is the refusal its value calls for.

Replay a saved case in this process, without the pipe (a crash then shows up directly):
    python tests/fuzz_worker.py --replay ARTIFACTS/gguf/finding-0001/case.pkl
"""

from __future__ import annotations

import os
import pickle
import resource
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import Any, BinaryIO, Optional

# A malformed size should fail an allocation inside the worker, not push the machine into swap.
ADDRESS_SPACE_LIMIT = 6 << 30
N_CTX = 512
QUERY = "What is in this picture?"


def read_message(stream: BinaryIO) -> Optional[Any]:
    header = stream.read(4)
    if len(header) < 4:
        return None
    (n,) = struct.unpack(">I", header)
    data = stream.read(n)
    if len(data) < n:
        return None
    return pickle.loads(data)


def write_message(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


class Executor:
    """Runs cases against the installed ecso_edge; keeps one tiny model loaded for image and prompt cases."""

    def __init__(self) -> None:
        import numpy as np

        import ecso_edge

        self.ecso_edge = ecso_edge
        self.np = np
        self._model: Optional[Any] = None
        self._sessions: dict[Any, Any] = {}
        self._options: Optional[Any] = None
        self.image = np.random.default_rng(0).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)

    def model(self) -> Any:
        if self._model is None:
            self._model = self.ecso_edge.Model.tiny(n_threads=1, n_ctx=N_CTX)
        return self._model

    def session(self, **config: Any) -> Any:
        key = tuple(sorted((k, repr(v)) for k, v in config.items()))
        if key not in self._sessions:
            self._sessions[key] = self.ecso_edge.Session(self.model(), self.ecso_edge.EcsoConfig(**config))
        return self._sessions[key]

    def execute(self, case: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            problem = getattr(self, "_" + case["kind"])(case)
            if isinstance(problem, dict):  # a handler that judges its own outcome (option cases)
                return {**problem, "seconds": time.perf_counter() - t0}
        except self.ecso_edge.EcsoError as e:
            reply = {"status": "error", "type": type(e).__name__, "message": str(e)}
        except Exception as e:  # any other class is a finding: the caller gets a typed error or nothing
            frames = "".join(traceback.format_tb(e.__traceback__)[-3:])
            reply = {"status": "exception", "type": type(e).__name__, "message": f"{frames}{type(e).__name__}: {str(e)[:600]}"}
        else:
            reply = {"status": "violation", "type": "", "message": problem} if problem else {"status": "ok"}
        reply["seconds"] = time.perf_counter() - t0
        return reply

    def _option(self, case: dict[str, Any]) -> dict[str, Any]:
        if self._options is None:
            from fuzz_option_runner import OptionRunner

            self._options = OptionRunner(self)
        return self._options.run(case)  # type: ignore[no-any-return]

    def _gguf(self, case: dict[str, Any]) -> Optional[str]:
        ee = self.ecso_edge
        model = ee.Model(case["text"], case["mmproj"], n_threads=1, n_ctx=256)
        # A defect may pass loading and only bite in the encoder or the decoder: run every step.
        for unsafe in (False, True):
            r = ee.Session(model, ee.EcsoConfig(verdict_override=unsafe, max_tokens_judge=1)).run(
                self.image, QUERY, max_tokens=2)
            if len(r.steps) != (4 if unsafe else 2):
                return f"{len(r.steps)} steps ran on the {'unsafe' if unsafe else 'safe'} branch"
        return None

    def _image(self, case: dict[str, Any]) -> Optional[str]:
        config = {} if case.get("max_pixels") is None else {"max_image_pixels": case["max_pixels"]}
        image = case["image"]
        if isinstance(image, dict) and image.get("recipe") == "array":
            from fuzz_image_inputs import build_array

            image = build_array(image)
        r = self.session(**config).answer(image, QUERY, max_tokens=1)
        if r.stats["image_encodes"] != 1 or len(r.steps[0].tokens) != 1:
            return f"an accepted image gave image_encodes={r.stats['image_encodes']}, tokens={r.steps[0].tokens}"
        return None

    def _prompt(self, case: dict[str, Any]) -> Optional[str]:
        config = dict(case.get("config", {}))
        config.setdefault("max_tokens_judge", 2)
        session = self.session(verdict_override=case.get("unsafe", False), **config)
        api = case.get("api", "run")
        query = case["query"]
        if api == "judge":
            r = session.judge(self.image, query, case.get("response", ""))
        elif api == "stream":
            stream = session.stream(self.image, query, max_tokens=3)
            text = "".join(stream)
            r = stream.result
            if r is None or text != r.answer:
                return "the streamed pieces do not join to the answer"
        elif api == "answer":
            r = session.answer(self.image, query, max_tokens=3)
        else:
            r = session.run(self.image, query, max_tokens=3)
        # The media marker or any other text in the query must not add an image slot.
        if r.stats["image_tokens"] != 16:
            return f"the prompt holds {r.stats['image_tokens']} image positions, not the image's 16"
        image_steps = [s for s in r.steps if s.name in ("answer", "judge", "caption")]
        for s in image_steps:
            if s.input_tokens.count(-1) != 1:
                return f"step {s.name} has {s.input_tokens.count(-1)} image slots"
        if any(-1 in s.input_tokens for s in r.steps if s.name == "text_only"):
            return "the text-only step holds an image slot"
        if r.stats["image_encodes"] != 1 and config.get("reuse_kv", True):
            return f"the image was encoded {r.stats['image_encodes']} times"
        return None


    def _state(self, case: dict[str, Any]) -> Optional[Any]:
        ee = self.ecso_edge
        session = ee.Session(self.model(), ee.EcsoConfig(verdict_override=case["unsafe"], max_tokens_judge=2),
                             parallel=case["parallel"])
        session.load_state(case["state"])  # StateFileError: refused whole, the goal for a damaged file
        # the KV bytes reach llama.cpp only when a turn restores them: continue the conversation
        try:
            r = session.chat(case["messages"], max_tokens=3)
        except ee.EcsoError as e:
            return {"status": "error", "type": f"{type(e).__name__} after loading", "message": str(e)}
        names = [s.name for s in r.steps]
        if names[:2] != ["answer", "judge"] or (case["unsafe"] and names[-1] != "text_only"):
            return f"a loaded file's turn ran the steps {names}"
        return None


def limit_memory() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = ADDRESS_SPACE_LIMIT if hard == resource.RLIM_INFINITY else min(hard, ADDRESS_SPACE_LIMIT)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def serve() -> int:
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    limit_memory()
    executor = Executor()
    write_message(replies, {"status": "ready", "pid": os.getpid()})
    requests = sys.stdin.buffer
    while True:
        case = read_message(requests)
        if case is None:
            return 0
        write_message(replies, executor.execute(case))


def replay(path: Path) -> int:
    case = pickle.loads(path.read_bytes())
    print(f"replaying {path}: kind {case['kind']}", flush=True)
    reply = Executor().execute(case)
    print(reply, flush=True)
    return 0 if reply["status"] in ("ok", "error") else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--replay":
        sys.exit(replay(Path(sys.argv[2])))
    sys.exit(serve())
