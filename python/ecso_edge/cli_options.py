"""The command line's option types: argparse `type=` parsers that turn every number a user can
type into a value in range or a one-line usage error naming the flag and what it accepts, the
parser class that shows such errors as one line, the model pair's flags that most commands share,
and --config's JSON object of EcsoConfig fields."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from typing import Any, Callable, NoReturn, Optional

from . import _core
from .arguments import INT32_MAX, INT64_MAX, MIN_N_CTX, int_arg
from .errors import ConfigError
from .model import Model, TextModel
from .shipped import tiny_pair

__all__ = ["Parser", "int_in", "number_in", "config_option", "add_model_options", "add_model_pair_options",
           "add_repack_option", "repack_of", "model_pair", "load_model", "THREADS", "TOKENS", "N_CTX", "GPU_LAYERS",
           "COUNT", "PARALLEL", "TINY_WARNING", "add_parallel_option", "add_judge_model_options", "load_judge_model"]

MAX_DIGITS = 30  # no flag takes a longer number; int() of a long digit string is slow
INTEGER = re.compile(r"[+-]?[0-9]+")


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error shown as one line (exit 2): what is wrong and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def int_in(low: int, high: int, meaning: str = "") -> Callable[[str], int]:
    """An argparse `type=`: a decimal integer in [low, high], else a one-line usage error."""
    allowed = f"an integer from {low} to {high}{meaning}"

    def parse(text: str) -> int:
        digits = text.strip()
        if len(digits) > MAX_DIGITS or not INTEGER.fullmatch(digits):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text[:40]!r}")
        value = int(digits)
        try:
            return int_arg("", value, low, high)
        except ConfigError:  # argparse names the flag itself
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}") from None

    parse.__name__ = "integer"
    return parse


def number_in(low: float, high: float) -> Callable[[str], float]:
    """An argparse `type=`: a finite decimal number in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text) if len(text) <= MAX_DIGITS else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a number from {low:g} to {high:g}, got {text[:40]!r}")
        return value

    parse.__name__ = "number"
    return parse


# Model(n_threads=...)'s rule: any int32 from 1, clamped by the core to the hardware threads
THREADS = int_in(1, INT32_MAX, " (more than the hardware threads run as that many)")
TOKENS = int_in(1, INT32_MAX)
N_CTX = int_in(MIN_N_CTX, INT32_MAX)  # Model(n_ctx=...)'s range
GPU_LAYERS = int_in(-1, INT32_MAX, " (-1: every layer)")
COUNT = int_in(0, INT64_MAX)
PARALLEL = int_in(1, _core.Session.max_parallel, " (requests that run together in one context)")


def add_parallel_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--parallel", type=PARALLEL, default=1,
                   help=f"{what} that decode together, one batch per step (default 1: one at a time; each "
                        "extra adds a context's KV cells; docs/parallel.md)")


def _json_object(text: str) -> dict[str, Any]:
    """--config's JSON object of EcsoConfig fields."""
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config must be a JSON object of EcsoConfig fields ({e})") from e
    if not isinstance(fields, dict):
        raise ConfigError("--config must be a JSON object of EcsoConfig fields, e.g. '{\"verdict_rule\": \"prefix\"}'")
    return fields


def _config_from_json(fields: dict[str, Any]) -> _core.EcsoConfig:
    """EcsoConfig(**fields) for --config, every refusal a one-line ConfigError naming the field."""
    for name, value in fields.items():  # one at a time first, so that the message can name the field
        try:
            _core.EcsoConfig(**{name: value})
        except (TypeError, ValueError) as e:
            text = str(e)
            if "\n" in text or name not in text:  # a binding's signature dump: say it plainly instead
                text = f"field '{name}' cannot be {json.dumps(value)[:80]} (a value of the wrong type or out of range)"
            raise ConfigError(f"--config: {text}") from None
    try:
        return _core.EcsoConfig(**fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--config: {str(e).splitlines()[0]}") from None


def config_option(text: Optional[str]) -> _core.EcsoConfig:
    """The EcsoConfig that --config asks for (the defaults without it)."""
    return _config_from_json(_json_object(text)) if text else _core.EcsoConfig()


TINY_WARNING = ("ecso-edge: warning: no --model/--mmproj given: running the shipped tiny pair (random weights, "
                "gibberish answers); pass --tiny to ask for it, or --model M.gguf --mmproj P.gguf for yours")


def add_repack_option(p: argparse.ArgumentParser) -> None:
    """--repack, as Model(repack=...): llama-server's --no-repack is `--repack off`."""
    p.add_argument("--repack", choices=["auto", "on", "off"], default="auto",
                   help="repack the weights for the CPU's fastest kernels (auto: on, except on CPUs with AMX)")


def repack_of(args: argparse.Namespace) -> Optional[bool]:
    """Model's repack argument for --repack."""
    return {"auto": None, "on": True, "off": False}[args.repack]


def add_model_pair_options(p: argparse.ArgumentParser) -> None:
    """--model and --mmproj (both), or --tiny for the shipped tiny pair: the pair alone, for a
    command that does not load it here (selftest hands it to the C++ program)."""
    p.add_argument("--model", default=None, help="text model GGUF")
    p.add_argument("--mmproj", default=None, help="vision projector GGUF")
    p.add_argument("--tiny", action="store_true",
                   help="run the shipped random-weight tiny pair (a format check: its answers are gibberish)")


def add_model_options(p: argparse.ArgumentParser, threads_help: str = "generation threads") -> None:
    """The pair's flags (add_model_pair_options); --n-ctx, --n-gpu-layers, --threads, --repack."""
    add_model_pair_options(p)
    p.add_argument("--n-ctx", type=N_CTX, default=4096)
    p.add_argument("--n-gpu-layers", type=GPU_LAYERS, default=0, help="-1 offloads every layer")
    p.add_argument("--threads", type=THREADS, default=None,
                   help=f"{threads_help} (default: half the cores; clamped to the hardware threads)")
    add_repack_option(p)


def model_pair(args: argparse.Namespace, warn: bool = True) -> tuple[str, str]:
    """The text model and projector the flags name, or the shipped tiny pair: asked for with
    --tiny, or (with a warning on stderr) when neither --model nor --mmproj is given. `warn=False`
    for a command whose own subject is the tiny pair (selftest), where nothing is to be warned of."""
    if args.tiny:
        if args.model or args.mmproj:
            raise ConfigError("--tiny runs the shipped tiny pair and cannot go with --model/--mmproj; "
                              "drop --tiny to run your pair")
    elif bool(args.model) != bool(args.mmproj):
        raise ConfigError("--model and --mmproj go together (or --tiny for the shipped tiny pair)")
    elif args.model:
        return str(args.model), str(args.mmproj)
    elif warn:
        print(TINY_WARNING, file=sys.stderr, flush=True)
    text, mmproj = tiny_pair()
    return str(text), str(mmproj)


def load_model(args: argparse.Namespace, pair: Optional[tuple[str, str]] = None) -> Model:
    """The pair of add_model_options' flags (or `pair`, already resolved by model_pair), loaded
    with their settings."""
    text, mmproj = pair if pair is not None else model_pair(args)
    return Model(text, mmproj, n_ctx=args.n_ctx, n_gpu_layers=args.n_gpu_layers, n_threads=args.threads,
                 repack=repack_of(args))


def add_judge_model_options(p: argparse.ArgumentParser) -> None:
    """--judge-model and --judge-format: a guard model judges step 2 in place of the self-judge."""
    p.add_argument("--judge-model", default=None,
                   help="a text-only guard model GGUF that judges step 2 in place of the model's self-judge "
                        "(docs/guard-formats.md)")
    p.add_argument("--judge-format", choices=_core.guard_format_names(), default=None,
                   help="the guard model's prompt and output format (needed with --judge-model)")
    p.add_argument("--judge-n-ctx", type=N_CTX, default=4096,
                   help="the guard model's context: its prompt, the query, the answer and its verdict")
    p.add_argument("--judge-chat-template", default=None,
                   help="a llama.cpp built-in template name for a guard GGUF that carries no chat template")


def load_judge_model(args: argparse.Namespace) -> dict[str, Any]:
    """Session's judge_model and judge_format for add_judge_model_options' flags ({} without them)."""
    if args.judge_model is None:
        if args.judge_format is not None:
            raise ConfigError("--judge-format goes with --judge-model (the guard model it describes)")
        return {}
    if args.judge_format is None:
        raise ConfigError("--judge-model needs --judge-format: one of " + ", ".join(_core.guard_format_names()))
    model = TextModel(args.judge_model, n_ctx=args.judge_n_ctx, n_threads=getattr(args, "threads", None),
                      repack=repack_of(args) if hasattr(args, "repack") else None,
                      chat_template=args.judge_chat_template)
    return {"judge_model": model, "judge_format": args.judge_format}
