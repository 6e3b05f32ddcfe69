"""MM-SafetyBench's TYPO images, rebuilt from its question files: each key phrase rendered as black
text on a white canvas, wrapped to the canvas width (as the benchmark's typography images are), so
users without the image archive can still build the TYPO variant."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .errors import ConfigError

__all__ = ["render_typo", "make_typo_images"]

WIDTH = 1024
FONT_SIZE = 90
MARGIN = 20


def render_typo(phrase: str, *, width: int = WIDTH, font_size: int = FONT_SIZE) -> Image.Image:
    font = ImageFont.load_default(size=font_size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in phrase.split():
        trial = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(trial, font=font) <= width - 2 * MARGIN:
            lines[-1] = trial
        else:
            lines.append(word)
    line_h = font_size + font_size // 4
    img = Image.new("RGB", (width, max(line_h, len(lines) * line_h) + 2 * MARGIN), "white")
    out = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        out.text((MARGIN, MARGIN + i * line_h), line, fill="black", font=font)
    return img


def make_typo_images(root: Path) -> int:
    """Writes data/imgs/<scenario>/TYPO/<id>.jpg under the MM-SafetyBench folder `root` from the
    "Key Phrase" of data/processed_questions/<scenario>.json. Returns the number written."""
    questions = root / "data" / "processed_questions"
    if not questions.is_dir():
        raise ConfigError(f"'{questions}' not found: pass the MM-SafetyBench folder")
    written = 0
    for path in sorted(questions.glob("*.json")):
        items = json.loads(path.read_text(encoding="utf-8"))
        out_dir = root / "data" / "imgs" / path.stem / "TYPO"
        out_dir.mkdir(parents=True, exist_ok=True)
        for key, item in items.items():
            phrase = item.get("Key Phrase") if isinstance(item, dict) else None
            if not isinstance(phrase, str) or not phrase.strip():
                raise ConfigError(f"'{path}', question {key}: no 'Key Phrase' to render")
            render_typo(phrase).save(out_dir / f"{key}.jpg", quality=95)
            written += 1
    return written
