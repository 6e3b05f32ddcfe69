#!/usr/bin/env python3
"""Regenerate (or, with --check, verify) the committed tiny LLaVA pair in models/.

Loads the generator package python/ecso_edge/tiny_models/ by file path, so it works without
building or installing the ecso_edge package (needs only numpy and gguf).
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import tempfile
from types import ModuleType

MODELS_DIR = pathlib.Path(__file__).resolve().parent
GENERATOR = MODELS_DIR.parent / "python" / "ecso_edge" / "tiny_models"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ecso_edge_tiny_models", GENERATOR / "__init__.py",
                                                  submodule_search_locations=[str(GENERATOR)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {GENERATOR}")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module executes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def check(gen: ModuleType, committed_dir: pathlib.Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = gen.write_tiny_pair(tmp)
        stale = [p.name for p in fresh
                 if not (committed_dir / p.name).is_file()
                 or (committed_dir / p.name).read_bytes() != p.read_bytes()]
    for name in stale:
        print(f"missing or not what the generator writes: {committed_dir / name}", file=sys.stderr)
    if stale:
        print("run: python models/make_tiny_pair.py", file=sys.stderr)
        return 1
    print(f"up to date: {', '.join(p.name for p in fresh)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=pathlib.Path, default=MODELS_DIR,
                        help="where the pair lives (default: this models/ folder)")
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temp dir and compare bytes; exit 1 on difference")
    args = parser.parse_args(argv)

    gen = load_generator()
    if args.check:
        return check(gen, args.out_dir)
    for path in gen.write_tiny_pair(args.out_dir):
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
