"""Worker side of the option campaign (fuzz_option_inputs.py): runs one option case against the
installed ecso_edge and judges its outcome against the value's verdict (`expect`).

A reply is fuzz_worker's: {"status": "ok" | "error" | "violation", "type": ..., "message": ...}.
"error" is a refusal or a typed error the verdict allows (its type: the exception class, "exit N"
or "HTTP N"); "violation" is a finding, its type saying which rule broke:
  pybind-signature  a TypeError that is pybind11's dump of the C++ signature
  unnamed           a refusal of an invalid value that does not name the option
  accepted-invalid  an invalid value was taken (the call succeeded, or failed later for another reason)
  refused-valid     a valid value was refused
  traceback / usage a CLI error that is not one line, or shows a traceback; an odd exit status
  5xx / shape       a server error for a client's fault; an error body not in OpenAI's shape
Any other exception class escapes to fuzz_worker, which reports it as "exception"; a crash or a
hang is caught by the parent.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from fuzz_option_inputs import EITHER, IMAGE, INVALID, VALID, base_body

QUERY = "What is in this picture?"
PYBIND_DUMP = ("incompatible function arguments", "incompatible constructor arguments",
               "The following argument types are supported")
LEAKS = PYBIND_DUMP + ("Traceback", "RecursionError", "_core.", "sys.set_int_max_str_digits")


class CallbackRaised(Exception):
    """What the "raises" on_token callback raises; run() must re-raise exactly this."""


def _ok() -> dict[str, Any]:
    return {"status": "ok"}


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"status": "error", "type": kind, "message": message[:600]}


def _violation(rule: str, message: str) -> dict[str, Any]:
    return {"status": "violation", "type": rule, "message": message[:2000]}


def _names_one(names: list[str], text: str) -> bool:
    return not names or any(n in text for n in names)


class OptionRunner:
    """Holds what the option cases share: the executor's tiny model, files for the CLI, a FastAPI
    test client over one app, and uvicorn.run replaced so that `serve` returns instead of listening."""

    def __init__(self, executor: Any) -> None:
        import uvicorn

        self.x = executor
        self.ee = executor.ecso_edge
        self.tmp = Path(tempfile.mkdtemp(prefix="ecso-option-fuzz-"))
        self.counter = 0
        self.served: list[dict[str, Any]] = []
        self._client: Optional[Any] = None
        self._files: Optional[dict[str, str]] = None
        self._uri: Optional[str] = None
        uvicorn.run = self._fake_uvicorn_run  # this process only: serve() must not listen

    def _fake_uvicorn_run(self, app: Any, **kwargs: Any) -> None:
        self.served.append(kwargs)
        app.state.queue.close()

    def run(self, case: dict[str, Any]) -> dict[str, Any]:
        self.counter += 1
        handler: Callable[[dict[str, Any]], dict[str, Any]] = getattr(self, "_" + case["target"])
        try:
            return handler(case)
        finally:
            if case["target"] in ("server_options", "serve_api", "cli"):
                # a FastAPI app (and the Session its queue holds) lives in reference cycles: collect it
                # now, or the KV caches of many cases pile up until the address-space limit is reached
                gc.collect()

    # -- Python API: Model, EcsoConfig, Session, ServerOptions, serve() -----------------------

    def judge_call(self, case: dict[str, Any], call: Callable[[], Optional[str]]) -> dict[str, Any]:
        expect, names = case["expect"], case["names"]
        try:
            problem = call()
        except CallbackRaised:
            return _ok()  # the callback's own exception, re-raised as documented
        except (self.ee.EcsoError, TypeError, ValueError) as e:
            message = f"{type(e).__name__}: {e}"
            if any(p in message for p in PYBIND_DUMP):  # its first line says it all; the rest echoes the arguments
                return _violation("pybind-signature", message.splitlines()[0][:300])
            refusal = isinstance(e, (self.ee.ConfigError, TypeError)) or not isinstance(e, self.ee.EcsoError)
            if not refusal:  # a typed error about something else: the context, the image, memory
                if expect == INVALID:
                    return _violation("accepted-invalid", f"the value was taken, then: {message}")
                return _error(type(e).__name__, message)
            if expect == VALID:
                return _violation("refused-valid", message)
            if expect == INVALID and not _names_one(names, str(e)):
                return _violation("unnamed", f"the error names none of {names}: {message}")
            return _error(type(e).__name__, message)
        if problem:
            return _violation("result", problem)
        if expect == INVALID:
            return _violation("accepted-invalid", f"{case['options']!r} was accepted")
        return _ok()

    def _tiny(self) -> tuple[str, str]:
        text, mmproj = self.ee.tiny_pair()
        return str(text), str(mmproj)

    def _model(self, case: dict[str, Any]) -> dict[str, Any]:
        kwargs = {"n_threads": 1, "n_ctx": 256, **case["options"]}

        def call() -> Optional[str]:
            model = self.ee.Model(*self._tiny(), **kwargs)
            session = self.ee.Session(model, self.ee.EcsoConfig(verdict_override=True, max_tokens_judge=1))
            r = session.run(self.x.image, QUERY, max_tokens=2)
            return None if len(r.steps) == 4 else f"{len(r.steps)} steps ran on the unsafe branch"

        return self.judge_call(case, call)

    def _config(self, case: dict[str, Any]) -> dict[str, Any]:
        base = {"verdict_override": True, "max_tokens_judge": 1}
        options, via = case["options"], case["via"]

        def call() -> Optional[str]:
            if via == "init":
                cfg = self.ee.EcsoConfig(**{**base, **options})
            elif via == "replace":
                cfg = self.ee.EcsoConfig(**base).replace(**options)
            else:
                cfg = self.ee.EcsoConfig(**base)
                for name, value in options.items():
                    setattr(cfg, name, value)
            self.ee.Session(self.x.model(), cfg).run(self.x.image, QUERY, max_tokens=2)
            return None

        return self.judge_call(case, call)

    def _callback(self, value: Any) -> Any:
        if isinstance(value, dict):
            pieces: list[str] = []
            recipe = value.get("callable")
            if recipe == "collect":
                return pieces.append
            if recipe == "raises":
                def raises(piece: str) -> None:
                    raise CallbackRaised(piece)
                return raises
            return lambda: None  # "no_args": a callable that cannot take the piece
        return value

    def _session(self, case: dict[str, Any]) -> dict[str, Any]:
        options, api = case["options"], case["api"]
        session = self.x.session(verdict_override=True, max_tokens_judge=1)
        max_tokens = options.get("max_tokens", 2)
        query = options.get("query", QUERY)

        def call() -> Optional[str]:
            if api == "judge":
                session.judge(self.x.image, options.get("query", QUERY), options.get("response", "an answer"))
            elif api == "stream":
                stream = session.stream(self.x.image, query, max_tokens=max_tokens)
                text = "".join(stream)
                if stream.result is None or text != stream.result.answer:
                    return "the streamed pieces do not join to the answer"
            else:
                method = session.run if api == "run" else session.answer
                method(self.x.image, query, max_tokens=max_tokens, on_token=self._callback(options.get("on_token")))
            return None

        return self.judge_call(case, call)

    def _server_options(self, case: dict[str, Any]) -> dict[str, Any]:
        from ecso_edge.server import ServerOptions, create_app

        def call() -> Optional[str]:
            options = ServerOptions(**case["options"])
            app = create_app(self.x.model(), self.ee.EcsoConfig(), options)
            app.state.queue.close()
            return None

        return self.judge_call(case, call)

    def _serve_api(self, case: dict[str, Any]) -> dict[str, Any]:
        from ecso_edge.server import serve

        def call() -> Optional[str]:
            before = len(self.served)
            serve(*self._tiny(), **{"n_ctx": 256, "n_threads": 1, **case["options"]})
            return None if len(self.served) == before + 1 else "serve() returned without running the server"

        return self.judge_call(case, call)

    # -- the command line ---------------------------------------------------------------------

    def files(self) -> dict[str, str]:
        if self._files is None:
            from PIL import Image

            root = self.tmp / "data"
            (root / "images").mkdir(parents=True)
            Image.fromarray(self.x.image).save(root / "images" / "pic.png")
            records = root / "records.jsonl"
            records.write_text(json.dumps({"id": "r1", "image": "images/pic.png", "query": QUERY}) + "\n")
            text, mmproj = self._tiny()
            self._files = {"text": text, "mmproj": mmproj, "image": str(root / "images" / "pic.png"),
                           "records": str(records), "root": str(root)}
        return self._files

    def cli_argv(self, command: str, options: dict[str, str], equals_form: bool, out: Path) -> list[str]:
        f = self.files()
        fixed: dict[str, list[str]] = {
            "demo": [],
            "run": ["--model", f["text"], "--mmproj", f["mmproj"], "--image", f["image"], "--query", QUERY, "--json"],
            "data-engine": ["--input", f["records"], "--image-root", f["root"], "--out", str(out / "sft.json")],
            "eval": ["--benchmark", "jsonl", "--root", f["records"], "--image-root", f["root"], "--out-dir", str(out)],
            "make-tiny-model": [str(out), "--for-text-model", f["text"], "--vit", "tiny"],
            "serve": ["--log-level", "warning"],
        }
        small = {"--threads": "1", "--max-tokens": "2"}
        if command in ("run", "data-engine", "eval", "serve"):
            small["--n-ctx"] = "512"
        if command == "make-tiny-model":
            small = {}
        argv = [command, *fixed[command]]
        for flag, value in {**small, **options}.items():
            argv += [f"{flag}={value}"] if equals_form and flag in options else [flag, value]
        return argv

    def _cli(self, case: dict[str, Any]) -> dict[str, Any]:
        from ecso_edge.cli import main

        out = self.tmp / f"out-{self.counter}"
        command = case["command"]
        argv = self.cli_argv(command, case["options"], case.get("equals_form", False), out)
        err, stdout = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
                try:
                    code = main(argv)
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
        finally:
            shutil.rmtree(out, ignore_errors=True)
        return self.judge_exit(case, command, code, err.getvalue())

    def judge_exit(self, case: dict[str, Any], command: str, code: int, stderr: str) -> dict[str, Any]:
        expect, names = case["expect"], case["names"]
        lines = [line for line in stderr.splitlines() if line.strip()]
        if any(p in stderr for p in LEAKS):
            return _violation("traceback", f"exit {code}, stderr:\n{stderr[-1500:]}")
        if code == 0:
            return _violation("accepted-invalid", f"exit 0 for {case['options']!r}") if expect == INVALID else _ok()
        if code == 2:
            if expect == VALID:
                return _violation("refused-valid", stderr)
            if len(lines) != 1 or not lines[0].startswith(f"ecso-edge {command}: error: ") or \
                    not _names_one(names, lines[0]):
                return _violation("usage", f"not one line naming {names}:\n{stderr[-1500:]}")
            return _error("exit 2", lines[0])
        if code == 1:
            last = lines[-1] if lines else ""
            if not (last.startswith("ecso-edge: error: ") or command == "make-tiny-model" and last.startswith("error: ")):
                return _violation("usage", f"exit 1 without a one-line error:\n{stderr[-1500:]}")
            if expect == INVALID and not _names_one(names, last):
                return _violation("accepted-invalid", f"the value was taken, then: {last}")
            return _error("exit 1", last)
        return _violation("usage", f"exit {code}:\n{stderr[-1500:]}")

    # -- the server: chat request bodies ---------------------------------------------------------

    def client(self) -> Any:
        if self._client is None:
            from fastapi.testclient import TestClient
            from PIL import Image

            from ecso_edge.server import ServerOptions, create_app

            buffer = io.BytesIO()
            Image.fromarray(self.x.image).save(buffer, format="PNG")
            self._uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            options = ServerOptions(default_max_tokens=2, max_request_bytes=1 << 20)
            app = create_app(self.x.model(), self.ee.EcsoConfig(), options)
            self._client = TestClient(app, raise_server_exceptions=False)
            self._client.__enter__()  # the app's lifespan: held for the worker's life
        return self._client

    def _chat(self, case: dict[str, Any]) -> dict[str, Any]:
        self.client()
        body = base_body()
        for name, value in case["options"].items():
            if name == "ecso.first_answer":
                body["ecso"] = {"first_answer": value}
            else:
                body[name] = value
            if name == "max_completion_tokens":
                body.pop("max_tokens", None)
        raw = json.dumps(body).encode("utf-8", "surrogatepass")
        return self.post(case, raw)

    def _chat_body(self, case: dict[str, Any]) -> dict[str, Any]:
        self.client()
        return self.post(case, case["raw"])

    def post(self, case: dict[str, Any], raw: bytes) -> dict[str, Any]:
        assert self._uri is not None
        raw = raw.replace(IMAGE.encode(), self._uri.encode())
        r = self.client().post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        return self.judge_http(case, r.status_code, r.headers.get("content-type", ""), r.content)

    def judge_http(self, case: dict[str, Any], status: int, content_type: str, content: bytes) -> dict[str, Any]:
        expect, names = case["expect"], case["names"]
        text = content.decode("utf-8", "replace")
        if status >= 500:
            return _violation("5xx", f"HTTP {status}: {text[:1500]}")
        if status == 200:
            if "text/event-stream" in content_type:
                if "data: [DONE]" not in text or '"error"' in text:
                    return _violation("shape", f"a stream without [DONE], or with an error: {text[-800:]}")
            else:
                try:
                    answer = json.loads(text)["choices"][0]["message"]["content"]
                except (ValueError, KeyError, IndexError, TypeError):
                    return _violation("shape", f"HTTP 200 but not a chat completion: {text[:800]}")
                if not isinstance(answer, str):
                    return _violation("shape", f"the answer is not a string: {text[:800]}")
            if expect == INVALID:
                return _violation("accepted-invalid", f"HTTP 200 for {case['options'] or case.get('shape')!r}")
            return _ok()
        if not 400 <= status < 500:
            return _violation("shape", f"HTTP {status}: {text[:800]}")
        try:
            error = json.loads(text)["error"]
            assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            return _violation("shape", f"HTTP {status} not in OpenAI's error shape: {text[:800]}")
        message, param = error["message"], error["param"] or ""
        if any(p in message for p in LEAKS):
            return _violation("shape", f"HTTP {status} shows internals: {message[:800]}")
        if expect == VALID and error["code"] != "context_length_exceeded":
            return _violation("refused-valid", f"HTTP {status}: {message}")
        if expect == INVALID and names and not any(n in message or param.startswith(n) for n in names):
            return _violation("unnamed", f"HTTP {status} names none of {names}: {message} (param {param!r})")
        return _error(f"HTTP {status}", message)


__all__ = ["OptionRunner", "EITHER", "INVALID", "VALID"]
