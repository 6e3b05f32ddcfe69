"""matplotlib, drawn off-screen: the optional `report` extra's one entry point. Figures are built
on matplotlib's object API with the Agg canvas, never pyplot, so no display, no backend choice and
no global figure state are involved, and a caller (or a test) can inspect the returned Figure."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL_HINT = "pip install 'ecso-edge[report]'"
# Direct (or a peer) and ECSO keep the same colours in every figure.
COLORS = {"direct": "#7f7f7f", "ecso": "#1f6fc8", "reference": "#9a9ad2", "ecso_no_reuse": "#9a9ad2",
          "ecso_parallel": "#0b2f6b",
          "naive": "#d25a3c", "llama_server": "#3ca05a"}


def matplotlib_missing() -> Optional[str]:
    """None when matplotlib can be imported, else what to run to get the figures."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return f"figures need matplotlib: {INSTALL_HINT}"
    return None


def new_figure(width: float, height: float) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: "Figure", stem: Path, formats: tuple[str, ...] = ("png", "svg")) -> dict[str, Path]:
    """Writes stem.png and stem.svg (or the formats asked for); returns them by format."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {fmt: stem.with_suffix("." + fmt) for fmt in formats}
    for fmt, path in paths.items():
        # SVG without a date, so the same report gives the same file
        meta: dict[str, Any] = {"Date": None} if fmt == "svg" else {}
        fig.savefig(path, format=fmt, dpi=120, metadata=meta)
    return paths


def color_of(name: str) -> str:
    """A contender's colour by its kind: the longest key of COLORS its name starts with."""
    kinds = sorted((k for k in COLORS if name.startswith(k)), key=len, reverse=True)
    return COLORS[kinds[0]] if kinds else "#b0b0b0"
