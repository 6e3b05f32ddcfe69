"""Per model family, on its generated tiny pair (ecso_edge.tiny_models): the pair loads without
ECSO_TRUST_PROJECTOR, every image chunk is encoded once per run, reuse on and off pick the same
tokens on both branches, the GGUF's own template frames the prompt with the image markers mtmd
expects, and what is special to the family (Gemma 3: non-causal image attention, a sliding
window; MiniCPM-V: each version's slice layout; MobileVLM V1: the type its depthwise kernels need) is handled. Tokens against llama.cpp's own evaluation: test_llama_reference.py; damaged
files: the single-edit sweep in test_fuzz.py."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import numpy as np
import pytest

import ecso_edge
import gguf_mutate as gm
from ecso_edge import ConfigError, EcsoConfig, ModelLoadError, Session
from ecso_edge import tiny_models
from ecso_edge.tiny_models import gemma3, minicpmv, qwen_vl

QUERY = "What is shown in the picture? Answer please."
FAMILIES = list(tiny_models.FAMILIES)
# media chunks one image becomes: LLaVA-1.6 slices a 64x64 image into an overview and 4 tiles,
# SmolVLM into 4 tiles and an overview, InternVL into 4 tiles and a thumbnail, MiniCPM-V (2.6 and
# 2.5) into an overview and 4 slices
CHUNKS = {"llava15": 1, "llava16": 5, "gemma3": 1, "qwen2.5vl": 1, "smolvlm": 5, "qwen3vl": 1, "qwen2vl": 1, "pixtral": 1, "internvl": 5, "minicpmv": 5, "minicpmv2.5": 5, "mobilevlm": 1, "mobilevlm1": 1}
# the text markers mtmd puts around an image's tokens (LLaVA has none)
# (SmolVLM: each tile after <fake_token_around_image><row_R_col_C>, the overview last, closed by
# <fake_token_around_image>; Pixtral: none before, its [IMG_BREAK]s are the projector's own rows;
# MiniCPM-V 2.5: its last slice's </image>, inside the </slice> that closes all of them)
IMAGE_MARKERS: dict[str, tuple[str | None, str]] = {"gemma3": ("<start_of_image>", "<end_of_image>"), "qwen2.5vl": ("<|vision_start|>", "<|vision_end|>"),
                 "qwen3vl": ("<|vision_start|>", "<|vision_end|>"), "qwen2vl": ("<|vision_start|>", "<|vision_end|>"),
                 "smolvlm": ("<row_1_col_1>", "<fake_token_around_image>"), "pixtral": (None, "[IMG_END]"),
                 "internvl": ("<img>", "</img>"), "minicpmv": ("<image>", "</slice>"),
                 "minicpmv2.5": ("<image>", "</image>")}
CHECK = {"llava15": "tensor table", "llava16": "tensor table", "gemma3": "child process", "qwen2.5vl": "child process",
         "smolvlm": "child process", "qwen3vl": "child process",
         "qwen2vl": "child process", "pixtral": "child process", "internvl": "child process",
         "minicpmv": "child process", "minicpmv2.5": "child process", "mobilevlm": "child process",
         "mobilevlm1": "child process"}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(11).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def load(pairs: dict[str, tuple[Path, Path]], family: str, **options: int) -> ecso_edge.Model:
    text, mmproj = pairs[family]
    return ecso_edge.Model(text, mmproj, **{"n_threads": 1, "n_ctx": 1024, **options})


@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_by_default_and_says_how_it_was_checked(family_pairs: dict[str, tuple[Path, Path]],
                                                             family: str, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.delenv("ECSO_TRUST_PROJECTOR", raising=False)
    monkeypatch.setenv("ECSO_CACHE_DIR", str(tmp_path))
    first, second = load(family_pairs, family), load(family_pairs, family)
    assert first.projector_check == CHECK[family]
    # a pass is cached by file and llama.cpp build: only the first load runs the check process
    assert second.projector_check == (CHECK[family] + " (cached)" if CHECK[family] == "child process" else CHECK[family])


def test_an_edited_projector_is_checked_again(family_pairs: dict[str, tuple[Path, Path]], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECSO_CACHE_DIR", str(tmp_path / "cache"))
    text, mmproj = family_pairs["gemma3"]
    copy = tmp_path / "mmproj.gguf"
    copy.write_bytes(mmproj.read_bytes())
    assert ecso_edge.Model(text, copy, n_threads=1).projector_check == "child process"
    assert ecso_edge.Model(text, copy, n_threads=1).projector_check == "child process (cached)"
    copy.write_bytes(mmproj.read_bytes() + b"\0" * 32)  # same path, new size and time
    assert ecso_edge.Model(text, copy, n_threads=1).projector_check == "child process"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_reuse_picks_the_same_tokens_and_encodes_each_chunk_once(family_pairs: dict[str, tuple[Path, Path]],
                                                                 family: str, unsafe: bool,
                                                                 image: np.ndarray) -> None:
    model = load(family_pairs, family)
    # 64 answer tokens: Gemma 3's prompts and answers run past its 24-position window
    runs = {reuse: Session(model, EcsoConfig(verdict_override=unsafe, reuse_kv=reuse)).run(image, QUERY, max_tokens=64)
            for reuse in (True, False)}
    on, off = runs[True], runs[False]
    assert [s.name for s in on.steps] == (["answer", "judge", "caption", "text_only"] if unsafe
                                          else ["answer", "judge"])
    for a, b in zip(on.steps, off.steps):
        assert a.tokens == b.tokens, a.name
        assert a.input_tokens == b.input_tokens, a.name
    assert on.answer == off.answer
    image_steps = 3 if unsafe else 2
    assert sum(s.stats["image_encodes"] for s in on.steps) == CHUNKS[family]
    assert sum(s.stats["image_encodes"] for s in off.steps) == CHUNKS[family] * image_steps
    assert all(s.stats["tokens_reused"] > 0 for s in on.steps[1:])
    assert on.steps[0].input_tokens.count(-1) == CHUNKS[family]
    if family == "gemma3":
        assert on.steps[0].stats["prompt_tokens"] + 64 > gemma3.Gemma3Spec().sliding_window * 3


def _apply_template(model: ecso_edge.Model, system: str, user: str) -> str:
    """llama.cpp's own rendering of a system message and one user turn with the model's template."""
    import llama_cpp

    tmpl = model.chat_template
    assert tmpl
    msgs = (llama_cpp.llama_chat_message * 2)(llama_cpp.llama_chat_message(b"system", system.encode()),
                                              llama_cpp.llama_chat_message(b"user", user.encode()))
    buf = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_chat_apply_template(tmpl.encode(), msgs, 2, True, buf, len(buf))
    assert 0 < n < len(buf)
    return buf.raw[:n].decode()


# Step 1's frame (prompt text before and after the user's message) per family, written out, with a
# system message `{system}` ("" leaves the template's own default: no system message in any of
# these). Gemma has no system turn: llama.cpp puts the system message at the top of the user turn.
def _frame(family: str, system: str) -> tuple[str, str]:
    if family == "gemma3":
        return f"<start_of_turn>user\n{system + chr(10) + chr(10) if system else ''}", "<end_of_turn>\n<start_of_turn>model\n"
    if family in ("qwen2.5vl", "qwen3vl", "qwen2vl", "internvl", "minicpmv"):
        turn = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        return turn + "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
    if family == "minicpmv2.5":  # Llama 3 turns; the tokenizer adds the BOS
        turn = f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>" if system else ""
        return (turn + "<|start_header_id|>user<|end_header_id|>\n\n",
                "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    if family == "pixtral":
        return (f"[SYSTEM_PROMPT] {system}[/SYSTEM_PROMPT]" if system else "") + "[INST] ", "[/INST]"
    if family == "smolvlm":
        return f"<|im_start|>{system + chr(10) + chr(10) if system else ''}User: ", "<end_of_utterance>\nAssistant:"
    assert family in ("llava15", "llava16", "mobilevlm", "mobilevlm1")  # vicuna turns
    return (system + "\n\n" if system else "") + "USER: ", "\nASSISTANT:"


# The paper's system line, written out: only the paper's family (a LLaVA projector framed by
# vicuna) gets it by default. MobileVLM has vicuna turns but not LLaVA's projector.
LLAVA_LINE = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the human's questions.")
DEFAULT_SYSTEM = {family: LLAVA_LINE if family in ("llava15", "llava16") else "" for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_gets_its_own_default_system_message(family_pairs: dict[str, tuple[Path, Path]],
                                                         family: str) -> None:
    model = load(family_pairs, family)
    assert EcsoConfig().system_prompt is None
    session = Session(model)
    assert (session._core.prompt_head, session._core.prompt_tail) == _frame(family, DEFAULT_SYSTEM[family])
    assert EcsoConfig().system_prompt_for(model._core) == DEFAULT_SYSTEM[family]
    # an explicit "" is no system message on every family, LLaVA's included
    bare = Session(model, EcsoConfig(system_prompt=""))
    assert (bare._core.prompt_head, bare._core.prompt_tail) == _frame(family, "")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_paper_preset_puts_llavas_line_in_every_familys_template(family_pairs: dict[str, tuple[Path, Path]],
                                                                       family: str) -> None:
    model = load(family_pairs, family)
    preset = EcsoConfig.paper_preset()
    assert preset.system_prompt == LLAVA_LINE
    assert preset.replace(system_prompt=None) == EcsoConfig()  # only the system line differs
    session = Session(model, preset)
    assert (session._core.prompt_head, session._core.prompt_tail) == _frame(family, LLAVA_LINE)
    assert preset.system_prompt_for(model._core) == LLAVA_LINE


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_is_framed_by_the_models_template_with_the_familys_image_markers(
        family_pairs: dict[str, tuple[Path, Path]], family: str, image: np.ndarray) -> None:
    model = load(family_pairs, family)
    session = Session(model, EcsoConfig.paper_preset())
    head, tail = session._core.prompt_head, session._core.prompt_tail
    assert head + QUERY + tail == _apply_template(model, LLAVA_LINE, QUERY)
    r = session.answer(image, QUERY, max_tokens=1)
    tokens = r.steps[0].input_tokens
    first, last = tokens.index(-1), len(tokens) - 1 - tokens[::-1].index(-1)
    if family in IMAGE_MARKERS:
        start_marker, end_marker = IMAGE_MARKERS[family]
        end = model.tokenize(end_marker, parse_special=True)
        # mtmd's layout: the family's start marker, the image's tokens, its end marker
        assert len(end) == 1 and tokens[last + 1] == end[0]
        if start_marker is not None:
            start = model.tokenize(start_marker, parse_special=True)
            assert len(start) == 1 and tokens[first - 1] == start[0]


# A 64x64 image as mtmd lays it out for MiniCPM-V (the overview, then 2x2 slices, rows ended by
# "\n"; IMG: one media chunk), chosen by clip.minicpmv_version: 2.6 frames each slice in
# <slice> ... </slice>, 2.5 puts the slices' own <image> ... </image> inside one <slice> ... </slice>.
_IMAGE, _SLICE = ["<image>", "IMG", "</image>"], ["<slice>", "IMG", "</slice>"]
MINICPMV_LAYOUT = {"minicpmv": [*_IMAGE, *_SLICE, *_SLICE, "\n", *_SLICE, *_SLICE],
                   "minicpmv2.5": [*_IMAGE, "<slice>", *_IMAGE, *_IMAGE, "\n", *_IMAGE, *_IMAGE, "</slice>"]}


@pytest.mark.parametrize("family", list(MINICPMV_LAYOUT))
def test_minicpmv_lays_out_the_slices_as_its_version_does(family_pairs: dict[str, tuple[Path, Path]], family: str,
                                                          image: np.ndarray) -> None:
    model = load(family_pairs, family)
    tokens = Session(model).answer(image, QUERY, max_tokens=1).steps[0].input_tokens
    markers = {}
    for text in minicpmv.IMAGE_TOKENS:
        ids = model.tokenize(text, parse_special=True)
        assert len(ids) == 1, text
        markers[ids[0]] = text
    layout = MINICPMV_LAYOUT[family]
    start = tokens.index(-1) - 1
    shown = ["IMG" if t == -1 else markers.get(t) or model.token_bytes(t).decode()
             for t in tokens[start:start + len(layout)]]
    assert shown == layout
    assert tokens.count(-1) == layout.count("IMG") == CHUNKS[family]


def test_gemma3_image_must_fit_one_batch(family_pairs: dict[str, tuple[Path, Path]], image: np.ndarray) -> None:
    # Gemma 3's image tokens attend to each other both ways: split over two batches, the first
    # half would not see the second (llama.cpp's helper aborts the process there)
    n_tokens = (gemma3.TINY_VIT.image_size // gemma3.TINY_VIT.patch_size // gemma3.TINY_POOL) ** 2
    with pytest.raises(ConfigError, match=(
            f"the image is {n_tokens} tokens, and this model \\(projector 'gemma3'\\) attends to all of them at "
            f"once, so they must be evaluated in one batch; n_batch is 8. Load the model with "
            f"Model\\(\\.\\.\\., n_batch={n_tokens}\\) or more")):
        Session(load(family_pairs, "gemma3", n_batch=8)).run(image, QUERY, max_tokens=2)
    whole = Session(load(family_pairs, "gemma3", n_batch=n_tokens)).run(image, QUERY, max_tokens=4)
    assert len(whole.steps[0].tokens) == 4


def test_qwen25vl_image_fills_more_context_than_positions(family_pairs: dict[str, tuple[Path, Path]],
                                                          image: np.ndarray) -> None:
    # M-RoPE: the 64x64 image is 8x8 tokens over 8 positions. The context holds tokens (KV
    # cells), so a full context stops generation ("context"), counted in tokens, not positions.
    model = load(family_pairs, "qwen2.5vl", n_ctx=256)
    r = Session(model).answer(image, QUERY, max_tokens=400)
    step = r.steps[0]
    assert r.stats["image_tokens"] == (64 // qwen_vl.TINY_VIT.patch_size // 2) ** 2 == 64
    assert step.stop_reason == "context"
    assert step.stats["prompt_tokens"] + len(step.tokens) - 1 == 256  # the last token is never decoded
    # and both branches near the full context: reuse on and off agree
    runs = [Session(model, EcsoConfig(verdict_override=True, reuse_kv=reuse)).run(image, QUERY, max_tokens=150)
            for reuse in (True, False)]
    assert [s.tokens for s in runs[0].steps] == [s.tokens for s in runs[1].steps]
    assert runs[0].steps[2].stats["tokens_reused"] > 64  # the caption step shares the head and the image


def _mobilevlm1_with_f32_kernel(pairs: dict[str, tuple[Path, Path]], tmp_path: Path, kernel: str) -> Path:
    name = f"mm.model.{kernel}.weight"
    g = gm.Gguf.read(pairs["mobilevlm1"][1])
    return g.set_tensor(name, g.tensors[name].astype(np.float32)).write(tmp_path / "mmproj.gguf")


@pytest.mark.parametrize("kernel", ["mb_block.1.block.0.0", "mb_block.2.block.0.0"])
def test_mobilevlm1_depthwise_kernel_in_f32_is_an_error(family_pairs: dict[str, tuple[Path, Path]], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, kernel: str) -> None:
    # ggml_conv_2d_dw multiplies the kernel by an f16 im2col: a mul_mat of an f32 weight by f16
    # columns, which ggml's CPU backend does not take, so the graph scheduler aborts (in the check process)
    monkeypatch.setenv("ECSO_CACHE_DIR", str(tmp_path))
    bad = _mobilevlm1_with_f32_kernel(family_pairs, tmp_path, kernel)
    with pytest.raises(ModelLoadError, match=re.escape(
            f"projector (mmproj) '{bad}': llama.cpp crashed loading it (SIGABRT in a check process, so this one is "
            "unharmed) (llama.cpp: ") + ".*" + re.escape("GGML_ASSERT(*cur_backend_id != -1) failed)")):
        ecso_edge.Model(family_pairs["mobilevlm1"][0], bad, n_threads=1)


def test_mobilevlm1_pointwise_kernel_in_f32_runs(family_pairs: dict[str, tuple[Path, Path]], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, image: np.ndarray) -> None:
    # a 1x1 convolution is a plain matrix in clip.cpp's graph, whatever its type
    monkeypatch.setenv("ECSO_CACHE_DIR", str(tmp_path))
    bad = _mobilevlm1_with_f32_kernel(family_pairs, tmp_path, "mb_block.1.block.2.0")
    model = ecso_edge.Model(family_pairs["mobilevlm1"][0], bad, n_threads=1)
    assert model.projector_check == "child process"
    assert len(Session(model).answer(image, QUERY, max_tokens=4).steps[0].tokens) == 4


@pytest.mark.parametrize("family", FAMILIES[1:])  # llava15: models/make_tiny_pair.py --check
def test_make_tiny_model_writes_the_familys_pair_byte_for_byte(family_pairs: dict[str, tuple[Path, Path]],
                                                               family: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ecso_edge.cli", "make-tiny-model", str(tmp_path), "--family", family],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written = [Path(line) for line in proc.stdout.split()]
    assert [p.name for p in written] == [p.name for p in family_pairs[family]]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(written, family_pairs[family]))


def test_the_fuzz_sweeps_name_every_family_and_only_those() -> None:
    """The sweeps' tables (test_fuzz.py, run with -m fuzz) are per-family data: a family added
    without its sweep, or a sweep of a family that is gone, fails here, in the default suite."""
    import test_fuzz
    assert list(test_fuzz.SWEEP_TARGETS) == FAMILIES
    assert list(test_fuzz.SWEEP_MIN_CASES) == FAMILIES
