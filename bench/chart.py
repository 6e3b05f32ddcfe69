"""A horizontal bar chart of median latencies, drawn with Pillow (already a dependency)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLORS = {"direct": (90, 90, 90), "ecso": (40, 110, 200), "reference": (150, 150, 210), "naive": (210, 90, 60),
          "llama": (60, 160, 90)}


def draw_latency_chart(medians: dict[str, float], title: str, out: Path) -> Path:
    font = ImageFont.load_default()
    names = list(medians)
    width, bar_h, left, right, top = 900, 34, 200, 110, 50
    height = top + bar_h * len(names) + 30
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 12), title, fill="black", font=font)
    longest = max(medians.values()) or 1.0
    scale = (width - left - right) / longest
    for i, name in enumerate(names):
        y = top + i * bar_h
        kind = name.split("_")[0]
        color = COLORS.get(kind, (120, 120, 120))
        draw.text((10, y + 9), name, fill="black", font=font)
        draw.rectangle([left, y + 4, left + max(1, int(medians[name] * scale)), y + bar_h - 6], fill=color)
        draw.text((left + int(medians[name] * scale) + 8, y + 9), f"{medians[name]:.3f} s", fill="black", font=font)
    draw.text((10, height - 22), "median seconds per request (lower is better)", fill=(90, 90, 90), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
