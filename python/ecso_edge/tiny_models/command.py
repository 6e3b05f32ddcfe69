"""`ecso-edge make-tiny-model`: writes a family's tiny pair, or a random projector of a family
for a real text GGUF."""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

from . import FAMILIES, VITS, write_family_pair, write_gemma3_projector_for, write_projector_for

# families a random projector can be written for, from a real text model
_PROJECTOR_FAMILIES = ("llava15", "gemma3")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make-tiny-model",
        description="Write a family's tiny random pair, or a random projector for a text GGUF.")
    parser.add_argument("out_dir", type=pathlib.Path)
    parser.add_argument("--family", choices=list(FAMILIES), default="llava15",
                        help="model family (default llava15, the pair shipped in models/)")
    parser.add_argument("--for-text-model", type=pathlib.Path, metavar="PATH",
                        help="write OUT_DIR/<stem>-mmproj-random-<vit>.gguf matching this text GGUF")
    parser.add_argument("--vit", choices=sorted(VITS), help="llava15's vision tower (default clip-b16)")
    parser.add_argument("--image-size", type=int, metavar="N")
    args = parser.parse_args(argv)

    if args.for_text_model is None:
        if args.vit is not None or args.image_size is not None:
            parser.error("--vit and --image-size need --for-text-model")
        paths: Sequence[pathlib.Path] = write_family_pair(args.family, args.out_dir)
    else:
        if args.family not in _PROJECTOR_FAMILIES:
            parser.error(f"--for-text-model writes projectors of {', '.join(_PROJECTOR_FAMILIES)}, "
                         f"not {args.family}")
        if args.family != "llava15" and (args.vit is not None or args.image_size is not None):
            parser.error("--vit and --image-size apply to --family llava15")
        try:
            if args.family == "gemma3":
                out = args.out_dir / f"{args.for_text_model.stem}-mmproj-random-gemma3.gguf"
                paths = [write_gemma3_projector_for(args.for_text_model, out)]
            else:
                vit = args.vit or "clip-b16"
                out = args.out_dir / f"{args.for_text_model.stem}-mmproj-random-{vit}.gguf"
                paths = [write_projector_for(args.for_text_model, out, vit=vit, image_size=args.image_size)]
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
