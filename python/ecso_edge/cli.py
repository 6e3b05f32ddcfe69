"""The `ecso-edge` command: its parser, and each command wired to the code that does its work:
demo (demo.py), run, chat, data-engine, make-tiny-model, selftest, system-info, serve, and (from
eval_cli) eval, report, make-typo."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import warnings
from typing import Optional, Sequence

from . import _core
from .arguments import MAX_CACHE_MIB
from .chat_file import SavedChat
from .cli_options import (COUNT, THREADS, TOKENS, Parser, add_judge_model_options, add_model_options,
                          add_model_pair_options, add_parallel_option, add_repack_option, config_option, int_in,
                          load_judge_model, load_model, model_pair, number_in, repack_of)
from .demo import print_result, run_demo
from .errors import ConfigError, EcsoError
from .eval_cli import add_eval_commands
from .images import load_rgb
from .session import Model, Session
from .shipped import selftest_program

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(threads=args.threads, max_tokens=args.max_tokens, repack=repack_of(args))


def _cmd_run(args: argparse.Namespace) -> int:
    text, mmproj = model_pair(args)
    model = Model(
        text,
        mmproj,
        n_ctx=args.n_ctx,
        n_gpu_layers=args.n_gpu_layers,
        n_threads=args.threads,
        n_threads_batch=args.threads_batch,
        repack=repack_of(args),
        verbose=args.verbose,
    )
    config = _core.EcsoConfig()
    if args.no_reuse:
        config.reuse_kv = False
    session = Session(model, config, **load_judge_model(args))
    stream = args.stream and not args.json
    r = session.run(
        args.image,
        args.query,
        max_tokens=args.max_tokens,
        on_token=(lambda piece: print(piece, end="", flush=True)) if stream else None,
    )
    if args.json:
        json.dump(r.to_dict(), sys.stdout, ensure_ascii=False, indent=2)
        print()
    elif stream:
        print()
    else:
        print_result(r)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from .chat_cli import HELP, ChatLoop
    from .chat_file import ChatFile

    config = config_option(args.config)
    for path in args.image or []:
        load_rgb(path, max_pixels=config.max_image_pixels)  # a bad --image fails the command, with its reason
    store, saved = None, None
    if args.resume is not None:  # the file is checked, and read, before the model loads
        if not config.reuse_kv:
            raise ConfigError("--resume keeps the session's state next to the conversation, and the config's "
                              "reuse_kv is false: drop one of them")
        store = ChatFile(args.resume)
        store.check()
        saved = store.load(config.max_image_pixels) if store.exists() else None
        system = _resumed_system(saved, args.system, args.resume)
    else:
        system = args.system
    model = load_model(args)
    interactive = sys.stdin.isatty()
    if interactive:
        # Ctrl-C stops an answer even when the shell started us with SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print(f"ecso-edge chat on {os.path.basename(model.text_model_path)} (ECSO protects every answer)\n{HELP}\n", flush=True)
    with warnings.catch_warnings():
        # a refused state file is said in one line of the chat's own, below
        warnings.filterwarnings("ignore", "ecso-edge: starting with an empty cache", RuntimeWarning)
        session = Session(model, config, state=store.state_path if store else None, **load_judge_model(args))
    loop = ChatLoop(session, max_tokens=args.max_tokens, system=system, store=store)
    if session.state_status.startswith("refused"):
        print(f"ecso-edge chat: warning: {session.state_status.removeprefix('refused: ')}; the conversation goes "
              "on, its next turn evaluated whole", file=sys.stderr, flush=True)
    if saved is not None:
        loop.resume(saved)
    elif store is not None:
        print(f"[new conversation, saved to {store.path} after every turn]", flush=True)
    for path in args.image or []:
        loop.attach(path)
    return loop.run(sys.stdin, interactive)


def _resumed_system(saved: Optional[SavedChat], given: Optional[str], path: str) -> Optional[str]:
    """The system message of a resumed chat: its own; --system may only repeat it."""
    if saved is None or not saved.messages:
        return given
    first = saved.messages[0]
    own = first["content"] if first["role"] == "system" and isinstance(first["content"], str) else None
    if given is not None and given != own:
        raise ConfigError(f"--system differs from the system message of the conversation in {path!r}: drop "
                          "--system to continue it, or name another --resume file for a new conversation")
    return own


def _cmd_data_engine(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data_engine import run_data_engine, trace_path_for
    from .datasets import read_records

    pair = model_pair(args)  # --model without --mmproj fails before the records are read
    records = read_records(Path(args.input), fmt=args.format, variant=args.variant)
    out = Path(args.out)
    image_root = Path(args.image_root) if args.image_root else None
    if args.ray:
        from .ray_engine import run_data_engine_ray

        if args.judge_model:
            raise ConfigError("--judge-model does not go with --ray yet: run the data engine without --ray "
                              "(--parallel N keeps N records in flight)")

        summary = run_data_engine_ray(
            records, out, model_path=pair[0], mmproj_path=pair[1],
            model_kwargs={"n_ctx": args.n_ctx, "n_gpu_layers": args.n_gpu_layers, "n_threads": args.threads,
                          "repack": repack_of(args)},
            actors=args.actors, cpus_per_actor=args.threads or 1, gpus_per_actor=args.gpus_per_actor,
            image_root=image_root, resume=args.resume, limit=args.limit, max_tokens=args.max_tokens,
            ray_address=args.ray_address,
        )
    else:
        summary = run_data_engine(
            Session(load_model(args, pair), parallel=args.parallel, **load_judge_model(args)), records, out,
            image_root=image_root, resume=args.resume, limit=args.limit, max_tokens=args.max_tokens,
        )
    print(
        f"{summary.records} records in {summary.seconds:.1f} s ({summary.skipped} already done), "
        f"{summary.unsafe} unsafe, {summary.errors} errors; {summary.sft_examples} SFT examples in {out}, "
        f"trace in {trace_path_for(out)}"
    )
    return 0


def _cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from .tiny_models import command

    argv = [args.out_dir, "--family", args.family]
    if args.for_text_model:
        argv += ["--for-text-model", args.for_text_model]
        if args.vit is not None:
            argv += ["--vit", args.vit]
        if args.image_size is not None:
            argv += ["--image-size", str(args.image_size)]
    elif args.vit is not None or args.image_size is not None:
        print("error: --vit and --image-size need --for-text-model", file=sys.stderr)
        return 2
    return command.main(argv)


def _cmd_selftest(args: argparse.Namespace) -> int:
    # the self-test's subject is the shipped tiny pair: without --model/--mmproj that is no fallback to warn of
    text, mmproj = model_pair(args, warn=False)
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "passive")
    return subprocess.call([str(selftest_program()), text, mmproj], env=env)


def _cmd_system_info(args: argparse.Namespace) -> int:
    print(json.dumps(_core.system_info(), indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import ServerOptions, serve
    except ImportError as e:
        raise ConfigError(f"`ecso-edge serve` needs the server extra: pip install 'ecso-edge[server]' ({e})") from e
    from pathlib import Path

    config = config_option(args.config)  # a typo fails before anything else is decided
    if args.cache_ram is not None and args.config and "conversation_cache_mib" in json.loads(args.config):
        raise ConfigError("--cache-ram and --config's conversation_cache_mib set the same bound: give one of them")
    text, mmproj = model_pair(args)
    options = ServerOptions(
        model_name=args.alias or Path(text).stem,
        api_key=args.api_key or os.environ.get("ECSO_EDGE_API_KEY") or None,
        max_queue=args.max_queue,
        parallel=args.parallel,
        max_request_bytes=args.max_request_mb * 1024 * 1024,  # checked by ServerOptions
        default_max_tokens=args.max_tokens,
        allow_remote_images=args.allow_remote_images,
        state_dir=args.state_dir,
        state_save_s=args.state_save_s,
        cache_ram_mib=args.cache_ram,
    )
    serve(text, mmproj, host=args.host, port=args.port, options=options, config=config,
          n_ctx=args.n_ctx, n_gpu_layers=args.n_gpu_layers, n_threads=args.threads, repack=repack_of(args),
          log_level=args.log_level, judge=lambda: load_judge_model(args))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="ecso-edge", description="ECSO-protected answers from LLaVA-style GGUF models")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run both ECSO branches on the shipped tiny model and show every step")
    d.add_argument("--threads", type=THREADS, default=1)
    d.add_argument("--max-tokens", type=TOKENS, default=24)
    add_repack_option(d)
    d.set_defaults(func=_cmd_demo)

    r = sub.add_parser("run", help="one ECSO request on your own model pair")
    add_model_options(r)
    r.add_argument("--image", required=True)
    r.add_argument("--query", required=True)
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.add_argument("--stream", action="store_true", help="print the answer as it is decided")
    r.add_argument("--max-tokens", type=TOKENS, default=512)
    r.add_argument("--threads-batch", type=THREADS, default=None, help="prompt/image threads (default: --threads)")
    r.add_argument("--no-reuse", action="store_true", help="evaluate every step from an empty KV cache")
    r.add_argument("--verbose", action="store_true", help="show llama.cpp's own log")
    add_judge_model_options(r)
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser("chat", help="a terminal chat with ECSO protecting every answer (/image PATH attaches an image)")
    add_model_options(c)
    c.add_argument("--image", action="append", default=None, help="attach an image to the first message (repeatable)")
    c.add_argument("--system", default=None, help="the conversation's system message (default: the config's)")
    c.add_argument("--config", default=None, help="EcsoConfig fields as a JSON object, e.g. '{\"verdict_override\": true}'")
    c.add_argument("--max-tokens", type=TOKENS, default=512)
    c.add_argument("--resume", default=None, metavar="FILE",
                   help="keep the conversation in FILE (and the session's state in FILE.state), saved after "
                        "every turn and on exit: continue it if FILE exists, else start one there")
    add_judge_model_options(c)
    c.set_defaults(func=_cmd_chat)

    de = sub.add_parser("data-engine", help="ECSO over a dataset: LLaVA SFT data plus a JSONL trace, resumable")
    de.add_argument("--input", required=True, help="JSONL/JSON (id, image, query), VLGuard or MM-SafetyBench file")
    de.add_argument("--image-root", default=None, help="folder the records' image paths are relative to")
    de.add_argument("--out", required=True, help="the SFT JSON to write; the trace goes next to it")
    add_model_options(de, threads_help="with --ray: per actor, and the CPUs it reserves")
    de.add_argument("--format", choices=["auto", "jsonl", "vlguard", "mm-safetybench"], default="auto")
    de.add_argument("--variant", choices=["SD", "TYPO", "SD_TYPO"], default="SD", help="MM-SafetyBench images")
    de.add_argument("--limit", type=COUNT, default=None, help="only the first N input records")
    de.add_argument("--resume", action="store_true", help="keep the trace and skip the records already in it")
    de.add_argument("--max-tokens", type=TOKENS, default=512)
    add_parallel_option(de, "records")
    add_judge_model_options(de)
    de.add_argument("--ray", action="store_true", help="run on Ray Data actors (pip install 'ecso-edge[ray]')")
    de.add_argument("--actors", type=int_in(1, 100_000), default=2, help="with --ray: actors, each loading the model once")
    de.add_argument("--ray-address", default=None, help="with --ray: an existing cluster (auto, ray://host:10001)")
    de.add_argument("--gpus-per-actor", type=number_in(0.0, 1024.0), default=0.0, help="with --ray: GPUs per actor (0.5: two share one)")
    de.set_defaults(func=_cmd_data_engine)

    add_eval_commands(sub)

    from .tiny_models import FAMILIES

    t = sub.add_parser("make-tiny-model", help="write a family's tiny test pair, or a random projector for a text GGUF")
    t.add_argument("out_dir")
    t.add_argument("--family", choices=list(FAMILIES), default="llava15",
                   help="model family (default llava15: the pair shipped with ecso-edge)")
    t.add_argument("--for-text-model", default=None,
                   help="write a random projector of the family (llava15 or gemma3) sized for this text GGUF")
    t.add_argument("--vit", choices=["tiny", "clip-b16"], default=None, help="llava15's tower (default clip-b16)")
    t.add_argument("--image-size", type=int_in(1, 4096), default=None,
                   help="the projector's input size, a multiple of the ViT's patch size")
    t.set_defaults(func=_cmd_make_tiny_model)

    s = sub.add_parser("selftest", help="run the C++ self-test program (no Python inside)")
    add_model_pair_options(s)
    s.set_defaults(func=_cmd_selftest)

    i = sub.add_parser("system-info", help="what the installed llama.cpp supports (CPU features, GPUs)")
    i.set_defaults(func=_cmd_system_info)

    sv = sub.add_parser("serve", help="OpenAI-compatible chat server with ECSO protection and a demo page at /")
    add_model_options(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    sv.add_argument("--port", type=int_in(1, 65535), default=8080)
    sv.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set ECSO_EDGE_API_KEY)")
    sv.add_argument("--max-queue", type=int_in(0, 1_000_000), default=8, help="requests waiting behind the running one; more get 503")
    add_parallel_option(sv, "requests")
    sv.add_argument("--max-request-mb", type=int_in(1, 1 << 20), default=20, help="request body limit; larger bodies get 413")
    sv.add_argument("--max-tokens", type=TOKENS, default=512, help="per-step token limit when a request sets none")
    sv.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs (off: data URIs only)")
    sv.add_argument("--alias", default=None, help="model id reported by /v1/models (default: the GGUF file name)")
    sv.add_argument("--config", default=None, help="EcsoConfig fields as a JSON object, e.g. '{\"verdict_rule\": \"logits\"}'")
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    sv.add_argument("--state-dir", default=None, metavar="DIR",
                    help="keep the conversations (KV cells, image encodings) in a state file in this folder "
                         "across restarts: loaded at startup, saved periodically and at shutdown (created if "
                         "missing; the file holds the conversations' text; docs/server.md)")
    sv.add_argument("--state-save-s", type=int_in(0, 24 * 3600), default=60, metavar="SECONDS",
                    help="with --state-dir: save every this many seconds when a request ran since the last "
                         "save (0: only at shutdown; a kill -9 loses what came after the last save)")
    sv.add_argument("--cache-ram", type=int_in(0, MAX_CACHE_MIB), default=None, metavar="MB",
                    help="MiB of conversations and image encodings kept between requests, all --parallel "
                         "slots together (each gets MB/N); 0 keeps nothing (default: 1024 per slot, the "
                         "config's conversation_cache_mib)")
    add_judge_model_options(sv)
    sv.set_defaults(func=_cmd_serve)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EcsoError as e:
        print(f"ecso-edge: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ecso-edge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
