"""`ecso-edge eval` (Direct vs ECSO on a safety benchmark, with its report files), `ecso-edge
report` (the same report files drawn again from a report.json, e.g. after installing the figures'
extra) and `ecso-edge make-typo` (MM-SafetyBench's TYPO images)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .cli_options import (COUNT, TOKENS, add_judge_model_options, add_model_options, add_parallel_option, config_option,
                          load_judge_model, load_model)
from .errors import ConfigError
from .judges.api_judge import ApiMetric
from .session import Session

if TYPE_CHECKING:
    from .evaluate import EvalReport

__all__ = ["add_eval_commands"]


def _print_report(report: "EvalReport", title: str, out_dir: Path, run: dict[str, Any]) -> None:
    from .report.eval_tables import LEGEND, markdown_table, trigger_line, write_report

    paths = write_report(report, out_dir, title, run)
    print(f"{title}: {LEGEND}\n\n{trigger_line(run)}\n")
    print(markdown_table(report))
    if "png" not in paths:
        from .report.plotting import matplotlib_missing

        print(f"\nno figure: {matplotlib_missing()}, then: ecso-edge report {out_dir}")
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))


def _api_judge(args: argparse.Namespace) -> Optional["ApiMetric"]:
    """The api metric of --judge-url (checked now: an unreachable endpoint fails before any item runs)."""
    if args.judge_url is None:
        for flag in ("judge_api_model", "judge_api_key_env"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} goes with --judge-url")
        return None
    from .judges.api_judge import ApiJudge

    judge = ApiJudge(args.judge_url, model=args.judge_api_model, api_key_env=args.judge_api_key_env)
    judge.check()
    return ApiMetric(judge)


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import describe_metrics, evaluate, load_benchmark
    from .judges.guard import GuardMetric
    from .report.eval_tables import prepare_out_dir

    config = config_option(args.config)  # before the model loads: a typo fails at once
    prepare_out_dir(Path(args.out_dir))  # and so does a folder the report cannot be written to
    api = _api_judge(args)
    guard = load_judge_model(args)  # the trigger and the guard metric at once, as the report says
    judges: list[Any] = ([GuardMetric(guard["judge_model"], guard["judge_format"])] if guard else []) + \
        ([api] if api else [])
    model = load_model(args)
    items, image_root = load_benchmark(args.benchmark, Path(args.root), variant=args.variant, scenarios=args.scenarios)
    if args.image_root:
        image_root = Path(args.image_root)
    if args.limit is not None:
        items = items[: args.limit]
    session = Session(model, config, parallel=args.parallel, **guard)
    report = evaluate(session, items, image_root, max_tokens=args.max_tokens, judges=judges)
    title = f"{args.benchmark} ({args.variant})" if args.benchmark == "mm-safetybench" else args.benchmark
    run = {"model": model.text_model_path, "mmproj": model.mmproj_path, "benchmark": args.benchmark, "root": args.root,
           "variant": args.variant, "max_tokens": args.max_tokens, "limit": args.limit, "parallel": args.parallel,
           "config": config.to_dict(), "trigger": session.judged_by, "metrics": describe_metrics(judges)}
    _print_report(report, f"{title}, {Path(model.text_model_path).name}", Path(args.out_dir), run)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report.eval_tables import read_report

    source = Path(args.report)
    data = source / "report.json" if source.is_dir() else source
    report, title, run = read_report(data)
    _print_report(report, title, Path(args.out_dir) if args.out_dir else data.parent, run)
    return 0


def _cmd_make_typo(args: argparse.Namespace) -> int:
    from .typo import make_typo_images

    n = make_typo_images(Path(args.root))
    print(f"wrote {n} TYPO images under {Path(args.root) / 'data' / 'imgs'}")
    return 0


def add_eval_commands(sub: "argparse._SubParsersAction[Any]") -> None:
    ev = sub.add_parser("eval", help="Direct vs ECSO harmless rates on a safety benchmark")
    ev.add_argument("--benchmark", choices=["mm-safetybench", "vlsafe", "vlguard", "jsonl"], required=True)
    ev.add_argument("--root", required=True, help="MM-SafetyBench folder, or the dataset file of the others")
    ev.add_argument("--image-root", default=None, help="image folder (default: as the benchmark lays it out)")
    ev.add_argument("--variant", choices=["SD", "TYPO", "SD_TYPO"], default="SD")
    ev.add_argument("--scenarios", nargs="*", default=None, help="MM-SafetyBench scenario numbers (default: the paper's)")
    ev.add_argument("--out-dir", default="ecso-eval", help="report.md/.csv/.json/.html and the figure (.png/.svg) go here")
    add_model_options(ev)
    ev.add_argument("--config", default=None, help="EcsoConfig fields as a JSON object, e.g. '{\"verdict_rule\": \"logits\"}'")
    ev.add_argument("--limit", type=COUNT, default=None)
    ev.add_argument("--max-tokens", type=TOKENS, default=512)
    add_parallel_option(ev, "items")
    add_judge_model_options(ev)
    ev.add_argument("--judge-url", default=None,
                    help="an OpenAI-compatible chat endpoint (llama-server, ecso-edge serve, a hosted model) that "
                         "scores both answers with MM-SafetyBench's evaluation prompts (docs/metrics.md)")
    ev.add_argument("--judge-api-model", default=None, help="with --judge-url: the model name the endpoint serves")
    ev.add_argument("--judge-api-key-env", default=None,
                    help="with --judge-url: the environment variable holding its API key (never the key itself)")
    ev.set_defaults(func=_cmd_eval)

    rp = sub.add_parser("report", help="write eval's report files (tables, figure, HTML) again from its report.json")
    rp.add_argument("report", help="the folder eval wrote (its --out-dir), or the report.json in it")
    rp.add_argument("--out-dir", default=None, help="where the files go (default: beside the report.json)")
    rp.set_defaults(func=_cmd_report)

    ty = sub.add_parser("make-typo", help="render MM-SafetyBench's TYPO images from its key phrases")
    ty.add_argument("--root", required=True, help="the MM-SafetyBench folder (data/processed_questions)")
    ty.set_defaults(func=_cmd_make_typo)
