"""The option campaign: every value a user can set, at its boundaries and beyond, on every surface
that takes one: `Model(...)`, `EcsoConfig(...)` (through the constructor, `replace()` and attribute
assignment), `Session.run/answer/stream/judge`, `ServerOptions` and `serve()`, the numeric flags of
every `ecso-edge` subcommand, and every field of a chat request body, plus a structure fuzz of that
body (nesting, wrong types, sizes, encodings, duplicate keys, raw NaN/Infinity literals).

Each case carries the option's own verdict on its value (`expect`):
  valid    the call must succeed, or end in a typed EcsoError that is not about the value
           (ContextOverflowError for a small context, a context llama.cpp cannot allocate, ...)
  invalid  the call must be refused: an EcsoError/TypeError/ValueError whose message names the
           option (CLI: exit 2, one line, the flag named; server: 4xx in OpenAI's error shape)
  either   unspecified (a bool where an int goes, a negative n_gpu_layers other than -1, ...):
           success or a clear refusal are both fine
Crashes, hangs, other exception classes and pybind11's signature dumps ("incompatible function
arguments") are findings whatever the verdict; so is a server 5xx. The worker (fuzz_worker.py,
kind "option") runs the case and judges it against `expect`.

`option_sweep()` is deterministic: every option with every value of its pool (the full run runs
all of it; a plain run a seeded sample covering every option). `option_cases()` is the hypothesis
strategy: several options at once, random values near the boundaries, and the chat-body structure
fuzz.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from hypothesis import strategies as st

VALID, INVALID, EITHER = "valid", "invalid", "either"
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
FLOAT32_MAX = 3.4028234663852886e38
MAX_THREADS = 512  # random thread counts above 8 up to this are folded down (see _bounded_model_value)
SURE_THREADS = 64  # thread counts up to this must work; above, refusing or clamping is as good as running
TINY_VOCAB = 832  # tokens in the shipped tiny pair's vocabulary (logit_bias keys)

# -- value pools ------------------------------------------------------------------------------

INTS = [0, 1, 2, 3, -1, 15, 16, 64, 512, 513, 10_000, 65_535, 65_536, INT32_MAX, 2**31, UINT32_MAX, 2**32,
        2**63 - 1, 2**63, 2**64, 10**12, -(2**31), -(2**31) - 1, 10**30, 10**400]
NON_INTS = [0.5, 1.0, -0.0, 2.5, math.nan, math.inf, -math.inf, 1e300, True, False, None, "1", "abc", "", [1], {},
            b"1"]
FLOATS = [0.0, 1e-45, 0.1, 0.5, 1.0, 1.5, 2.0, 2.5, -1e-9, -1.0, 1e38, 1e39, 1e300]
VALUES = list({(type(v), repr(v)): v for v in INTS + NON_INTS + FLOATS}.values())  # 1.0 once, 1e300 once
STRINGS = ["", "x", " ", "\x00", "\udcff", "é" * 3000, "nope", "{query}", "{response}", "{caption}",
           "{query} {response}", "{", "}", "{{response}}", "{response}{nope}", "{response}\x00", "\udcff{response}",
           "{query}{caption}", "before", "after", "exact", "prefix", "logits", "chatml", "vicuna", "llama2",
           "{% for m in messages %}{{ m.content }}{% endfor %}", b"{response}", b"\xff{query}", 5, None, ["x"]]
BIASES = [{}, {0: 1.0}, {1: -1e9}, {TINY_VOCAB - 1: 2.0}, {TINY_VOCAB: 1.0}, {-1: 1.0}, {2**31: 1.0}, {10**30: 1.0},
          {1: math.nan}, {1: math.inf}, {1: -math.inf}, {1: 1e300}, {"a": 1.0}, {1: "x"}, {True: 1.0}, {1.5: 1.0},
          {t: -math.inf for t in range(TINY_VOCAB)}, {t: 5.0 for t in range(TINY_VOCAB)}, None, [1], 5]
CLI_VALUES = ["0", "1", "2", "3", "-1", "-2", "15", "16", "64", "512", "513", "4096", "10000", "65535", "65536",
              "70000", "2147483647", "2147483648", "4294967295", "4294967296", "9223372036854775807",
              "9223372036854775808", "1000000000000", "1" + "0" * 40, "nan", "inf", "-inf", "0.5", "1e3", "1024.5",
              "True", "", "abc", " 7", "+7", "0x10", "1_000", "\u0661\u0662", "-0", "1.0"]


# -- specs: which values an option takes ------------------------------------------------------

def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class IntSpec:
    """An integer in [low, high]; `type_low..type_high` is what its C type holds. Values in the type
    but outside [low, high] are `outside` (invalid, or either where the meaning is unspecified)."""

    low: int
    high: int
    optional: bool = False
    strict_bool: bool = False  # True: a bool is refused (JSON, ServerOptions); False: Python's bool-is-int
    outside: str = INVALID
    type_low: Optional[int] = None
    type_high: Optional[int] = None

    def classify(self, v: object) -> str:
        if v is None:
            return VALID if self.optional else INVALID
        if isinstance(v, bool):
            return INVALID if self.strict_bool else EITHER
        if not _is_int(v):
            return INVALID
        assert isinstance(v, int)
        if self.low <= v <= self.high:
            return VALID
        tl = self.low if self.type_low is None else self.type_low
        th = self.high if self.type_high is None else self.type_high
        return self.outside if tl <= v <= th else INVALID


@dataclass(frozen=True)
class FloatSpec:
    """A finite number in [low, high] (`low_open`: low excluded); ints are numbers too."""

    low: float
    high: float
    low_open: bool = False
    optional: bool = False
    strict_bool: bool = False

    def classify(self, v: object) -> str:
        if v is None:
            return VALID if self.optional else INVALID
        if isinstance(v, bool):
            return INVALID if self.strict_bool else EITHER
        if not isinstance(v, (int, float)):
            return INVALID
        try:
            f = float(v)
        except OverflowError:
            return INVALID
        if not math.isfinite(f):
            return INVALID
        ok = (self.low < f if self.low_open else self.low <= f) and f <= self.high
        return VALID if ok else INVALID


@dataclass(frozen=True)
class BoolSpec:
    optional: bool = False
    strict: bool = False  # True: only True/False (JSON, ServerOptions)

    def classify(self, v: object) -> str:
        if isinstance(v, bool):
            return VALID
        if v is None:
            return VALID if self.optional else (INVALID if self.strict else EITHER)
        if self.strict or isinstance(v, (str, bytes, list, dict)):
            return INVALID
        return EITHER  # a number: truthiness, as Python's own bool() would read it


@dataclass(frozen=True)
class StrSpec:
    """A str; `check(s)` gives its class (default: any valid Unicode is valid). bytes: either."""

    check: Optional[Callable[[str], str]] = None
    optional: bool = False

    def classify(self, v: object) -> str:
        if v is None:
            return VALID if self.optional else INVALID
        if isinstance(v, bytes):
            return EITHER
        if not isinstance(v, str):
            return INVALID
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return INVALID  # a lone surrogate has no UTF-8 form
        return self.check(v) if self.check else VALID


@dataclass(frozen=True)
class ChoiceSpec:
    choices: tuple[Any, ...]
    optional: bool = False
    either: tuple[Any, ...] = ()

    def classify(self, v: object) -> str:
        if v is None:
            return VALID if self.optional else INVALID
        if isinstance(v, str) and v in self.choices:
            return VALID
        if isinstance(v, str) and v in self.either:
            return EITHER
        return INVALID


@dataclass(frozen=True)
class BiasSpec:
    """EcsoConfig.logit_bias: {token id in the vocabulary: finite bias, or -inf to ban the token}."""

    def classify(self, v: object) -> str:
        if not isinstance(v, dict):
            return INVALID
        verdicts = set()
        for token, bias in v.items():
            if isinstance(token, bool) or isinstance(bias, bool):
                verdicts.add(EITHER)
            elif not _is_int(token) or not isinstance(bias, (int, float)) or not 0 <= token < TINY_VOCAB:
                verdicts.add(INVALID)
            elif math.isnan(bias) or bias == math.inf or abs(bias) > FLOAT32_MAX and bias != -math.inf:
                verdicts.add(INVALID)
        if len(v) == TINY_VOCAB:
            verdicts.add(EITHER)  # every token banned or biased alike: any clean outcome
        return INVALID if INVALID in verdicts else EITHER if EITHER in verdicts else VALID


def _template(*required: str) -> Callable[[str], str]:
    def check(s: str) -> str:
        if not all("{" + r + "}" in s for r in required):
            return INVALID
        rest = s
        for r in ("query", "response", "caption"):
            rest = rest.replace("{" + r + "}", "")
        return EITHER if ("{" in rest or "}" in rest or "\x00" in s) else VALID

    return check


def _any_text(s: str) -> str:
    return EITHER if "\x00" in s else VALID


BUILTIN_TEMPLATES = ("chatml", "vicuna", "llama2", "llama3", "mistral-v7", "phi3", "zephyr", "gemma")


def _chat_template(s: str) -> str:
    if s in BUILTIN_TEMPLATES:
        return VALID
    return EITHER if (s == "" or "{%" in s or "\x00" in s) else INVALID


MODEL_OPTIONS: dict[str, Any] = {
    "n_ctx": IntSpec(16, INT32_MAX),  # positions are int32 in llama.cpp
    "n_batch": IntSpec(4, INT32_MAX),  # a session keeps 4 sequences, a batch row each
    "n_gpu_layers": IntSpec(-1, INT32_MAX, outside=EITHER, type_low=-(2**31)),
    "mmproj_gpu": BoolSpec(),
    "n_threads": IntSpec(1, SURE_THREADS, optional=True, outside=EITHER, type_low=0, type_high=INT32_MAX),
    "n_threads_batch": IntSpec(1, SURE_THREADS, optional=True, outside=EITHER, type_low=0, type_high=INT32_MAX),
    "flash_attn": BoolSpec(optional=True),
    "repack": BoolSpec(optional=True),
    "seed": IntSpec(0, UINT32_MAX),
    "verbose": BoolSpec(),
}
# n_threads: 0 means "the default" in the core; more than SURE_THREADS is unspecified (refuse, clamp or
# run), but must not crash or hang
CONFIG_FIELDS: dict[str, Any] = {
    "judge_template": StrSpec(_template("response")),
    "caption_template": StrSpec(_template("query")),
    "text_only_template": StrSpec(_template("caption")),
    "system_prompt": StrSpec(_any_text),
    "chat_template": StrSpec(_chat_template, optional=True),
    "image_placement": ChoiceSpec(("before", "after")),
    "response_cut_chars": IntSpec(1, UINT64_MAX),
    "verdict_rule": ChoiceSpec(("exact", "prefix", "logits")),
    "reuse_kv": BoolSpec(),
    "shadow_judge": BoolSpec(),
    "verdict_override": BoolSpec(optional=True),
    "temperature": FloatSpec(0.0, FLOAT32_MAX),
    "top_p": FloatSpec(0.0, 1.0, low_open=True),
    "top_k": IntSpec(0, INT32_MAX),
    "seed": IntSpec(0, UINT32_MAX, optional=True),
    "ignore_eos": BoolSpec(),
    "logit_bias": BiasSpec(),
    "max_tokens_answer": IntSpec(1, INT32_MAX, optional=True),
    "max_tokens_judge": IntSpec(1, INT32_MAX),
    "max_tokens_caption": IntSpec(1, INT32_MAX, optional=True),
    "max_tokens_text_only": IntSpec(1, INT32_MAX, optional=True),
    "max_image_pixels": IntSpec(1, UINT64_MAX),
}
CONFIG_VIAS = ("init", "replace", "setattr")
# on_token recipes the worker turns into callables; other values are passed as they are
CALLBACKS = [None, {"callable": "collect"}, {"callable": "raises"}, {"callable": "no_args"}, 5, "print", [print]]
SESSION_OPTIONS: dict[tuple[str, str], Any] = {
    **{(api, "max_tokens"): IntSpec(1, INT32_MAX) for api in ("run", "answer", "stream")},
    **{(api, "on_token"): None for api in ("run", "answer")},  # classified by _callback_class
    ("judge", "response"): StrSpec(),
    ("judge", "query"): StrSpec(),
    ("run", "query"): StrSpec(),
}
SERVER_OPTIONS: dict[str, Any] = {
    "model_name": StrSpec(lambda s: VALID if s else INVALID),
    # an HTTP header carries the key: visible ASCII only
    "api_key": StrSpec(lambda s: VALID if s and all(33 <= ord(c) <= 126 for c in s) else INVALID, optional=True),
    "max_queue": IntSpec(0, 1_000_000, strict_bool=True),
    "max_request_bytes": IntSpec(1, 2**63 - 1, strict_bool=True),
    "default_max_tokens": IntSpec(1, INT32_MAX, strict_bool=True),
    "allow_remote_images": BoolSpec(strict=True),
    "state_save_s": IntSpec(0, 24 * 3600, strict_bool=True),
    "cache_ram_mib": IntSpec(0, 1 << 30, optional=True, strict_bool=True),
}
SERVE_API: dict[str, Any] = {
    "port": IntSpec(1, 65535, strict_bool=True),
    "log_level": ChoiceSpec(("critical", "error", "warning", "info", "debug")),
}
# (subcommand, flag): the spec of the number it parses. A CLI value is valid when it is a decimal
# integer (or, for floats, a finite decimal number) in range.
CLI_FLAGS: dict[tuple[str, str], Any] = {
    # the CLI takes Model(n_threads=...)'s range: any int32 from 1, clamped to the hardware threads
    ("demo", "--threads"): IntSpec(1, SURE_THREADS, outside=EITHER, type_high=INT32_MAX),
    ("demo", "--max-tokens"): IntSpec(1, INT32_MAX),
    **{(cmd, "--max-tokens"): IntSpec(1, INT32_MAX) for cmd in ("run", "data-engine", "eval", "serve")},
    **{(cmd, "--n-ctx"): IntSpec(16, UINT32_MAX) for cmd in ("run", "data-engine", "eval", "serve")},
    **{(cmd, "--n-gpu-layers"): IntSpec(-1, INT32_MAX) for cmd in ("run", "data-engine", "eval", "serve")},
    **{(cmd, "--threads"): IntSpec(1, SURE_THREADS, outside=EITHER, type_high=INT32_MAX)
       for cmd in ("run", "data-engine", "eval", "serve")},
    ("run", "--threads-batch"): IntSpec(1, SURE_THREADS, outside=EITHER, type_high=INT32_MAX),
    ("data-engine", "--limit"): IntSpec(0, 2**63 - 1),
    ("data-engine", "--actors"): IntSpec(1, 100_000),
    ("data-engine", "--gpus-per-actor"): FloatSpec(0.0, 1024.0),
    ("eval", "--limit"): IntSpec(0, 2**63 - 1),
    ("make-tiny-model", "--image-size"): IntSpec(1, 4096),
    ("serve", "--port"): IntSpec(1, 65535),
    ("serve", "--max-queue"): IntSpec(0, 1_000_000),
    ("serve", "--max-request-mb"): IntSpec(1, 1 << 20),
    ("serve", "--state-save-s"): IntSpec(0, 24 * 3600),
    ("serve", "--cache-ram"): IntSpec(0, 1 << 30),
}
SERVE_CONFIGS = ['{"temperature": 0.5}', '{"verdict_rule": "logits"}', '{"temperature": NaN}', '{"top_k": 1e400}',
                 '{"logit_bias": {"5": 1}}', '{"nope": 1}', "[]", '"x"', "{", '{"max_tokens_judge": 0}',
                 '{"seed": -1}', '{"seed": 4294967296}', '{"response_cut_chars": -1}', '{"reuse_kv": "no"}', ""]
# chat request fields: JSON values
CHAT_FIELDS: dict[str, Any] = {
    "max_tokens": IntSpec(1, INT32_MAX, optional=True, strict_bool=True),
    "max_completion_tokens": IntSpec(1, INT32_MAX, optional=True, strict_bool=True),
    "temperature": FloatSpec(0.0, 2.0, optional=True, strict_bool=True),
    "top_p": FloatSpec(0.0, 1.0, low_open=True, optional=True, strict_bool=True),
    "seed": IntSpec(0, UINT32_MAX, optional=True, strict_bool=True),
    "n": IntSpec(1, 1, optional=True, strict_bool=True),
    "presence_penalty": FloatSpec(0.0, 0.0, optional=True, strict_bool=True),
    "frequency_penalty": FloatSpec(0.0, 0.0, optional=True, strict_bool=True),
    "stream": BoolSpec(optional=True, strict=True),
    "ecso.first_answer": BoolSpec(optional=True, strict=True),
    "logprobs": None, "top_logprobs": None, "stop": None, "tools": None, "logit_bias": None,
    "response_format": None, "model": None, "user": None,
}


def _unsupported_class(v: object) -> str:
    """logprobs, stop, tools, ...: refused unless absent, null, empty or false."""
    if v is None or v is False or (isinstance(v, (list, dict)) and not v):
        return VALID
    return INVALID


def chat_field_class(name: str, v: object) -> str:
    if name in ("model", "user"):
        return EITHER  # not checked: the server has one model
    spec = CHAT_FIELDS[name]
    if spec is None:
        return _unsupported_class(v)
    if isinstance(v, bytes):
        return INVALID
    return str(spec.classify(v))


def _callback_class(v: object) -> str:
    if v is None or isinstance(v, dict):
        return VALID if v is None or v.get("callable") in ("collect", "raises") else EITHER
    return INVALID


_CLI_INT = re.compile(r"[+-]?[0-9]+")


def cli_class(spec: Any, text: str) -> str:
    s = text.strip()
    if isinstance(spec, FloatSpec):
        try:
            value = float(text) if len(text) <= 30 else math.nan
        except ValueError:
            return INVALID
        return str(spec.classify(value))
    if len(s) > 30 or not _CLI_INT.fullmatch(s):
        return INVALID
    return str(spec.classify(int(s)))


def combine(classes: list[str]) -> str:
    return INVALID if INVALID in classes else EITHER if EITHER in classes else VALID


def _many_threads(name: str, value: Any) -> bool:
    if "threads" not in name:
        return False
    if isinstance(value, str):
        value = int(value.strip()) if _CLI_INT.fullmatch(value.strip()) else 0
    return _is_int(value) and value > SURE_THREADS


def _case(target: str, options: dict[str, Any], classes: dict[str, str], **extra: Any) -> dict[str, Any]:
    expect = combine(list(classes.values()))
    # an invalid case's error must name one of the options that made it invalid
    # an error may name any option that is not plainly valid (an EITHER value may be refused first)
    names = [n for n, c in classes.items() if c != VALID] if expect == INVALID else list(classes)
    case = {"kind": "option", "target": target, "options": options, "expect": expect, "names": names, **extra}
    if any(_many_threads(n, v) for n, v in options.items()):
        # hundreds of threads: slow on two cores, and OpenMP keeps its pool (8 MiB of stack per
        # thread) for the rest of the process, which would starve later cases of address space
        case["fresh_worker"] = True
    return case


# -- the deterministic sweep --------------------------------------------------------------------

def option_sweep() -> Iterator[dict[str, Any]]:
    """Every option with every value of its pool, one option per case."""
    for name, spec in MODEL_OPTIONS.items():
        values = ["x", " "] + VALUES if not isinstance(spec, BoolSpec) else VALUES
        for v in values:
            yield _case("model", {name: v}, {name: spec.classify(v)})
    for name, spec in CONFIG_FIELDS.items():
        pool = BIASES if name == "logit_bias" else STRINGS if isinstance(spec, (StrSpec, ChoiceSpec)) else VALUES
        for v in pool:
            for via in CONFIG_VIAS:
                yield _case("config", {name: v}, {name: spec.classify(v)}, via=via)
    for (api, name), spec in SESSION_OPTIONS.items():
        pool = CALLBACKS if name == "on_token" else STRINGS if isinstance(spec, StrSpec) else VALUES
        for v in pool:
            cls = _callback_class(v) if name == "on_token" else spec.classify(v)
            yield _case("session", {name: v}, {name: cls}, api=api)
    for name, spec in SERVER_OPTIONS.items():
        for v in (STRINGS if isinstance(spec, StrSpec) else VALUES):
            yield _case("server_options", {name: v}, {name: spec.classify(v)})
    for name, spec in SERVE_API.items():
        for v in (STRINGS if isinstance(spec, ChoiceSpec) else VALUES):
            yield _case("serve_api", {name: v}, {name: spec.classify(v)})
    for (cmd, flag), spec in CLI_FLAGS.items():
        for text in CLI_VALUES:
            yield _case("cli", {flag: text}, {flag: cli_class(spec, text)}, command=cmd)
    for text in SERVE_CONFIGS:
        cls = VALID if text in SERVE_CONFIGS[:2] else EITHER if text == "" else INVALID  # "": no fields
        yield _case("cli", {"--config": text}, {"--config": cls}, command="serve")
    for name in CHAT_FIELDS:
        pool = [v for v in VALUES if not isinstance(v, bytes)] + ["x", [], {"type": "json_object"}, [{"a": 1}]]
        for v in pool:
            yield _case("chat", {name: v}, {name: chat_field_class(name, v)})
    for body in structure_sweep():
        yield body


def sample_sweep(cases: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """A seeded sample of `n` sweep cases that holds every option at least once (when n allows)."""
    rng = random.Random(seed)
    by_option: dict[str, list[int]] = {}
    for i, c in enumerate(cases):
        key = c["target"] + ":" + c.get("command", c.get("api", "")) + ":" + ",".join(c["options"]) \
            + ":" + c.get("shape", "")
        by_option.setdefault(key, []).append(i)
    picked = {rng.choice(ix) for ix in by_option.values()}
    rest = [i for i in range(len(cases)) if i not in picked]
    picked.update(rng.sample(rest, max(0, min(len(rest), n - len(picked)))))
    return [cases[i] for i in sorted(picked)]


# -- chat body structure ---------------------------------------------------------------------

def _nest(inner: str, depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + inner + "]" * depth
    return '{"a":' * depth + inner + "}" * depth


def body_case(raw: bytes, expect: str, shape: str, **extra: Any) -> dict[str, Any]:
    """A whole chat body as bytes (`raw`; the worker puts the image data URI in for IMAGE)."""
    return {"kind": "option", "target": "chat_body", "options": {}, "raw": raw, "expect": expect, "names": [],
            "shape": shape, **extra}


IMAGE = "@@IMAGE@@"  # the worker's data URI goes here


def base_body(query: str = "What is in this picture?", **fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "text", "text": query}, {"type": "image_url", "image_url": {"url": IMAGE}}]}], **fields}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


WRONG = [None, 0, 1.5, True, "x", [], {}, [None], [[]], [1], ["x"], {"a": 1}]


def structure_sweep() -> Iterator[dict[str, Any]]:
    """Deterministic structure cases of the chat body."""
    ok = _dumps(base_body())
    yield body_case(ok, VALID, "base")
    text = ok.decode()
    for depth in (1, 2, 10, 62, 63, 64, 65, 100, 1000, 50_000):
        for kind in ("list", "dict"):
            # depth of the extra field's value plus the body's own level
            expect = VALID if depth + 1 <= 64 else INVALID
            yield body_case((text[:-1] + ', "metadata": ' + _nest("1", depth, kind) + "}").encode(), expect,
                            f"nest-field-{kind}")
            inner = _nest('{"type": "text", "text": "q"}', depth, kind)
            yield body_case(text.replace('{"type": "text"', inner + ', {"type": "text"', 1).encode(),
                            INVALID, f"nest-content-{kind}")  # too deep, or a part that is not an object
    yield body_case(b"[" * 50_000, INVALID, "nest-unclosed")
    yield body_case(b'{"a":' * 50_000, INVALID, "nest-unclosed-dict")
    for v in WRONG:
        yield body_case(_dumps(v), INVALID, "body-type")
        yield body_case(_dumps({**base_body(), "messages": v}), INVALID, "messages-type")
        yield body_case(_dumps({**base_body(), "messages": [v]}), INVALID, "message-type")
        b = base_body()
        b["messages"][0]["content"] = v
        yield body_case(_dumps(b), VALID if isinstance(v, str) else INVALID, "content-type")  # a str: text only
        b = base_body()
        b["messages"][0]["content"][0] = v
        yield body_case(_dumps(b), INVALID, "part-type")
        b = base_body()
        b["messages"][0]["content"][0]["text"] = v
        yield body_case(_dumps(b), VALID if isinstance(v, str) else INVALID, "text-type")
        b = base_body()
        b["messages"][0]["content"][1]["image_url"] = v
        yield body_case(_dumps(b), INVALID, "image_url-type")
        b = base_body()
        b["messages"][0]["content"][1]["image_url"] = {"url": v}
        yield body_case(_dumps(b), INVALID, "url-type")
        b = base_body()
        b["messages"][0]["role"] = v
        yield body_case(_dumps(b), INVALID, "role-type")
        b = base_body()
        b["ecso"] = v
        ecso_ok = v is None or v == {} or v == {"a": 1}  # unknown keys of the extension are ignored
        yield body_case(_dumps(b), VALID if ecso_ok else EITHER if v in (0, [], False) else INVALID, "ecso-type")
    # sizes
    for n in (1, 2, 50):
        b = base_body()
        b["messages"][0]["content"] += [{"type": "image_url", "image_url": {"url": IMAGE}}] * (n - 1)
        yield body_case(_dumps(b), VALID if n <= 2 else EITHER, "images")  # fits or overflows the context
    for n in (100, 10_000):
        b = base_body()
        b["messages"] = [{"role": "system", "content": "s"}] * n + b["messages"]
        yield body_case(_dumps(b), VALID if n == 100 else EITHER, "many-messages")  # every one is in the prompt
        b = base_body()
        b["messages"][0]["content"] = [{"type": "text", "text": "q"}] * n + b["messages"][0]["content"]
        yield body_case(_dumps(b), EITHER, "many-parts")  # fits or overflows the context
    for n in (0, 1, 3000, 300_000, 2_000_000):
        # a blank question with an image is answered (chat apps send a bare image)
        yield body_case(_dumps(base_body("q" * n if n else " ")), EITHER if n else VALID, "query-size")
    yield body_case(_dumps(base_body(padding="x" * 1_100_000)), INVALID, "over-size-limit")
    # encodings
    for codec in ("utf-16", "utf-16-le", "utf-16-be", "utf-32"):
        yield body_case(json.dumps(base_body()).encode(codec), INVALID, "encoding")
    yield body_case(b"\xef\xbb\xbf" + ok, VALID, "utf-8-bom")
    for bad in (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"):
        yield body_case(ok.replace(b"What", b"Wh" + bad + b"at", 1), INVALID, "invalid-utf-8")
    for query in ("\udcff", "a\udcffb", "\x00", "\u202e", "\U0010ffff", "<__media__>", "\ud83d\ude00"):
        yield body_case(json.dumps(base_body(query)).encode(), EITHER, "escaped-text")
    # duplicate keys
    yield body_case(text.replace('"model": "tiny"', '"model": "tiny", "model": "x"', 1).encode(), INVALID,
                    "duplicate-key")
    yield body_case(text.replace('"role": "user"', '"role": "user", "role": "user"', 1).encode(), INVALID,
                    "duplicate-key-nested")
    yield body_case(text.replace('"max_tokens": 2', '"max_tokens": 2, "max_tokens": 1000000000000', 1).encode(),
                    INVALID, "duplicate-key-value")
    # raw literals where numbers go
    for literal in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 5000, "-" + "9" * 101, "0x10",
                    "01", "1.", ".5", "+1", "1e2", "2.0e0", "true"):
        valid = literal in ("1e2", "2.0e0")
        for field in ("max_tokens", "temperature", "seed"):
            cls = INVALID
            if valid and field == "temperature":
                cls = INVALID if literal == "1e2" else VALID
            yield body_case(text.replace('"max_tokens": 2', f'"{field}": {literal}', 1).encode(), cls,
                            "raw-literal")
    for junk in (b"", b" ", b"\x00", b"{", b"}", b'{"messages": [}', b"null", b"[]", b"{}" * 3, ok + b"x", ok[:-1]):
        yield body_case(junk, INVALID, "junk")


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Random structure: a valid body with 1-3 edits (a field set to a pool value, a level of nesting
    added, a part retyped, a part added), sometimes with a byte inserted anywhere."""
    body = base_body()
    classes: dict[str, str] = {}  # what each edit made of the body, by the place it edited
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["field", "field", "nest", "retype", "extra-part"]))
        if edit == "field":
            name = draw(st.sampled_from(sorted(CHAT_FIELDS)))
            v = draw(st.sampled_from([v for v in VALUES if not isinstance(v, bytes)]) | st.integers(-5, 2**33))
            if name == "ecso.first_answer":
                body["ecso"] = {"first_answer": v}
            else:
                body[name] = v
            classes[name] = chat_field_class(name, v)
            if name in ("max_tokens", "max_completion_tokens"):  # both set and different: refused, as it should be
                other = "max_completion_tokens" if name == "max_tokens" else "max_tokens"
                body.pop(other, None)
                classes.pop(other, None)
        elif edit == "nest":
            depth = draw(st.sampled_from([1, 5, 30, 59, 60, 63, 64, 200]))
            body["metadata"] = json.loads(_nest("0", depth, draw(st.sampled_from(["list", "dict"]))))
            classes["metadata"] = VALID if depth + 1 <= 64 else INVALID
        elif edit == "retype":
            where = draw(st.sampled_from(["content", "part", "text", "role"]))
            v = draw(st.sampled_from(WRONG))
            message = body["messages"][-1]
            content = message.get("content")
            if where == "content":
                message["content"] = v
            elif where == "part" and isinstance(content, list) and content:
                content[0] = v
            elif where == "text" and isinstance(content, list) and content and isinstance(content[0], dict) \
                    and content[0].get("type") == "text":
                content[0]["text"] = v
            elif where == "role":
                message["role"] = v
            else:
                continue
            classes["retype-" + where] = VALID if where in ("text", "content") and isinstance(v, str) else INVALID
        else:
            content = body["messages"][-1].get("content")
            if isinstance(content, list):
                content.append({"type": "text", "text": draw(st.text(max_size=30))})
                classes.setdefault("extra-part", EITHER)
    try:
        raw = json.dumps(body, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    except ValueError:
        raw = json.dumps(body).encode()
    expect = combine(list(classes.values()))
    if draw(st.integers(0, 5)) == 0:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\x00", b"[", b"{", b'"', b"\\", b","])) + raw[at:]
        expect = EITHER if expect != INVALID else INVALID  # may still be valid JSON (inside a string)
    return body_case(raw, expect, "random")


# -- hypothesis: several options at once ----------------------------------------------------------

def _values_for(spec: Any) -> st.SearchStrategy[Any]:
    if isinstance(spec, BiasSpec):
        return st.sampled_from(BIASES) | st.dictionaries(st.integers(-2, TINY_VOCAB + 2),
                                                         st.floats(allow_nan=True, allow_infinity=True), max_size=4)
    if isinstance(spec, (StrSpec, ChoiceSpec)):
        return st.sampled_from(STRINGS) | st.text(max_size=20)
    near = st.integers(-3, 3) | st.integers(2**31 - 3, 2**31 + 3) | st.integers(2**32 - 3, 2**32 + 3) | \
        st.integers(2**63 - 2, 2**63 + 2)
    if isinstance(spec, IntSpec) and spec.high <= UINT32_MAX:
        near = near | st.integers(spec.low, min(spec.high, 4096))
    return st.sampled_from(VALUES) | near | st.floats(allow_nan=True, allow_infinity=True)


def _bounded_model_value(name: str, v: Any) -> Any:
    # a random n_ctx between 2^20 and 2^31 may be allocatable and slow to clear: keep random ones small
    if name == "n_ctx" and _is_int(v) and 2**20 < v < INT32_MAX:
        return v % 4096 + 16
    if name in ("n_threads", "n_threads_batch") and _is_int(v) and 8 < v <= MAX_THREADS:
        return v % 8 + 1  # hundreds of threads on two cores: slow, and the sweep has 512 already
    return v


@st.composite
def _several(draw: st.DrawFn, target: str, specs: dict[Any, Any], **extra: Any) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(sorted(specs, key=str)), min_size=1, max_size=3, unique=True))
    options, classes = {}, {}
    for name in names:
        spec = specs[name]
        v = draw(_values_for(spec))
        if target == "model":
            v = _bounded_model_value(name, v)
        key = name if isinstance(name, str) else name[1]
        options[key] = v
        classes[key] = spec.classify(v)
    return _case(target, options, classes, **extra)


@st.composite
def _cli_several(draw: st.DrawFn) -> dict[str, Any]:
    cmd = draw(st.sampled_from(sorted({c for c, _ in CLI_FLAGS})))
    flags = sorted(f for c, f in CLI_FLAGS if c == cmd)
    chosen = draw(st.lists(st.sampled_from(flags), min_size=1, max_size=3, unique=True))
    options, classes = {}, {}
    for flag in chosen:
        text = draw(st.sampled_from(CLI_VALUES) | st.integers(-3, 70_000).map(str) | st.text(max_size=6))
        if flag in ("--threads", "--threads-batch") and text.strip().lstrip("+").isdigit() and \
                8 < int(text.strip()) <= MAX_THREADS:
            text = str(int(text.strip()) % 8 + 1)  # as above
        if flag == "--n-ctx" and _CLI_INT.fullmatch(text.strip()) and 2**20 < int(text.strip()) < INT32_MAX:
            text = str(int(text.strip()) % 4096 + 16)
        options[flag] = text
        classes[flag] = cli_class(CLI_FLAGS[(cmd, flag)], text)
    return _case("cli", options, classes, command=cmd, equals_form=draw(st.booleans()))


def option_cases() -> st.SearchStrategy[dict[str, Any]]:
    config_specs = dict(CONFIG_FIELDS)
    return st.one_of(
        _several("model", MODEL_OPTIONS),
        st.sampled_from(CONFIG_VIAS).flatmap(lambda via: _several("config", config_specs, via=via)),
        st.sampled_from(["run", "answer", "stream"]).flatmap(
            lambda api: _several("session", {(api, "max_tokens"): SESSION_OPTIONS[(api, "max_tokens")]}, api=api)),
        _several("server_options", SERVER_OPTIONS),
        _cli_several(),
        chat_bodies(), chat_bodies(),
    )
