"""Random-weight text models of the tiny pairs: `llama` (LLaVA's Vicuna, SmolVLM, Mistral,
MobileVLM, MiniCPM-Llama3-V 2.5's Llama 3), `gemma3` (with sliding-window attention), `qwen2vl` and `qwen3vl` (Qwen-VL, with M-RoPE)
and `qwen2` (InternVL, MiniCPM-V)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Sequence

import gguf
import numpy as np

from .gguf_io import Normal, finish, legacy_normal
from .vocab import build_vocab

# LLaVA-1.5's vicuna_v1 layout, written so that llama.cpp's template detection
# (`USER: ` and `ASSISTANT: `, no `SYSTEM: `) picks its built-in vicuna format, which
# renders the same text as this Jinja.
VICUNA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ 'ASSISTANT: ' + message['content'] + eos_token + '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Gemma's turns, as in Google's template (the system message joins the first user turn);
# llama.cpp detects `<start_of_turn>` and renders its built-in gemma format.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '')"
    " + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
GEMMA_CONTROL_TOKENS = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>")

# Qwen's ChatML turns; llama.cpp detects `<|im_start|>` and renders its built-in chatml format.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN_VL_CONTROL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")

# Meta's Llama 3 turns, as published (the BOS opens the first turn); llama.cpp detects
# `<|start_header_id|>` and renders its built-in llama3 format, which trims each message as this
# Jinja does but leaves the BOS to the tokenizer.
LLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
LLAMA3_CONTROL_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


@dataclass(frozen=True)
class TextSpec:
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_ff: int = 128
    context_length: int = 4096
    rms_eps: float = 1e-5
    rope_freq_base: float = 10000.0


TEXT_SEED = 20240314


def _add_vocab(w: gguf.GGUFWriter, tokens: list[str], scores: list[float], types: list[int], *,
               space_prefix: bool, template: str, add_bos: bool = True) -> None:
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(space_prefix)
    w.add_chat_template(template)


def _writer(path: pathlib.Path, arch: str, kind: str, *, context_length: int, n_embd: int, n_layer: int, n_ff: int,
            n_head: int, n_head_kv: int, label: str | None = None) -> gguf.GGUFWriter:
    """A writer with the metadata every tiny text model starts with, in this order."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"ecso-edge tiny {label or arch} text")
    w.add_description(f"random-weight {kind}-style text model for tests")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    return w


def _output(normal: Normal, types: list[int], e: int) -> np.ndarray:
    # Zero output rows for control/byte tokens mean greedy decoding emits only printable
    # pieces (and never EOS), so generated text is valid UTF-8.
    output = normal((len(types), e), 1.0)
    output[[i for i, t in enumerate(types) if t != gguf.TokenType.NORMAL]] = 0.0
    return output


def write_llama_text(path: pathlib.Path, spec: TextSpec = TextSpec(), seed: int = TEXT_SEED, *,
                     kind: str = "LLaVA-1.5", template: str = VICUNA_TEMPLATE, control_tokens: Sequence[str] = (),
                     add_bos: bool = True, label: str = "llava") -> pathlib.Path:
    """A llama text model: LLaVA-1.5's Vicuna by default, SmolVLM's SmolLM2 with its template and
    image-layout tokens."""
    tokens, scores, types = build_vocab(control_tokens)
    normal = legacy_normal(np.random.RandomState(seed))
    e, f = spec.n_embd, spec.n_ff

    w = _writer(path, "llama", kind, context_length=spec.context_length, n_embd=e, n_layer=spec.n_layer,
                n_ff=f, n_head=spec.n_head, n_head_kv=spec.n_head, label=label)
    w.add_layer_norm_rms_eps(spec.rms_eps)
    w.add_rope_freq_base(spec.rope_freq_base)
    w.add_rope_dimension_count(e // spec.n_head)
    _add_vocab(w, tokens, scores, types, space_prefix=True, template=template, add_bos=add_bos)

    # Large embeddings and attention output keep greedy decoding from settling into a
    # short loop.
    w.add_tensor("token_embd.weight", normal((len(tokens), e), 1.0))
    for i in range(spec.n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(e, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", normal((e, e), 0.3))
        w.add_tensor(f"blk.{i}.attn_k.weight", normal((e, e), 0.3))
        w.add_tensor(f"blk.{i}.attn_v.weight", normal((e, e), e ** -0.5))
        w.add_tensor(f"blk.{i}.attn_output.weight", normal((e, e), 2 * e ** -0.5))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(e, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", normal((f, e), e ** -0.5))
        w.add_tensor(f"blk.{i}.ffn_up.weight", normal((f, e), e ** -0.5))
        w.add_tensor(f"blk.{i}.ffn_down.weight", normal((e, f), f ** -0.5))
    w.add_tensor("output_norm.weight", np.ones(e, np.float32))
    w.add_tensor("output.weight", _output(normal, types, e))
    finish(w)
    return path


@dataclass(frozen=True)
class Gemma3Spec:
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 16
    n_ff: int = 128
    context_length: int = 4096
    # Short, so that a test prompt goes past it: with pattern 2, layer 0 is windowed and
    # layer 1 global (Gemma 3 itself: 5 windowed layers to 1 global, windows of 512-1024).
    sliding_window: int = 24
    sliding_window_pattern: int = 2
    rms_eps: float = 1e-6
    rope_freq_base: float = 1_000_000.0
    rope_freq_base_swa: float = 10_000.0


def write_gemma3_text(path: pathlib.Path, spec: Gemma3Spec = Gemma3Spec(), seed: int = TEXT_SEED + 2) -> pathlib.Path:
    """Gemma 3's text side: GQA, q/k norms, post-norms and sliding-window layers."""
    tokens, scores, types = build_vocab(GEMMA_CONTROL_TOKENS)
    normal = legacy_normal(np.random.RandomState(seed))
    e, f, hd = spec.n_embd, spec.n_ff, spec.head_dim
    q_out, kv_out = spec.n_head * hd, spec.n_head_kv * hd

    w = _writer(path, "gemma3", "Gemma-3", context_length=spec.context_length, n_embd=e, n_layer=spec.n_layer,
                n_ff=f, n_head=spec.n_head, n_head_kv=spec.n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(spec.rms_eps)
    w.add_rope_freq_base(spec.rope_freq_base)
    w.add_float32("gemma3.rope.freq_base_swa", spec.rope_freq_base_swa)
    w.add_sliding_window(spec.sliding_window)
    w.add_uint32("gemma3.attention.sliding_window_pattern", spec.sliding_window_pattern)
    _add_vocab(w, tokens, scores, types, space_prefix=False, template=GEMMA_TEMPLATE)

    # Gemma scales embeddings by sqrt(n_embd) and norms every sub-layer's input and output.
    w.add_tensor("token_embd.weight", normal((len(tokens), e), 0.3))
    for i in range(spec.n_layer):
        p = f"blk.{i}"
        w.add_tensor(f"{p}.attn_norm.weight", np.ones(e, np.float32))
        w.add_tensor(f"{p}.attn_q.weight", normal((q_out, e), 0.3))
        w.add_tensor(f"{p}.attn_k.weight", normal((kv_out, e), 0.3))
        w.add_tensor(f"{p}.attn_v.weight", normal((kv_out, e), e ** -0.5))
        w.add_tensor(f"{p}.attn_q_norm.weight", np.ones(hd, np.float32))
        w.add_tensor(f"{p}.attn_k_norm.weight", np.ones(hd, np.float32))
        w.add_tensor(f"{p}.attn_output.weight", normal((e, q_out), 2 * q_out ** -0.5))
        w.add_tensor(f"{p}.post_attention_norm.weight", np.ones(e, np.float32))
        w.add_tensor(f"{p}.ffn_norm.weight", np.ones(e, np.float32))
        w.add_tensor(f"{p}.ffn_gate.weight", normal((f, e), e ** -0.5))
        w.add_tensor(f"{p}.ffn_up.weight", normal((f, e), e ** -0.5))
        w.add_tensor(f"{p}.ffn_down.weight", normal((e, f), f ** -0.5))
        w.add_tensor(f"{p}.post_ffw_norm.weight", np.ones(e, np.float32))
    w.add_tensor("output_norm.weight", np.ones(e, np.float32))
    w.add_tensor("output.weight", _output(normal, types, e))
    finish(w)
    return path


@dataclass(frozen=True)
class QwenVlSpec:
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    context_length: int = 4096
    # M-RoPE: the head's rotary pairs split into (temporal, height, width, unused) sections, as
    # Qwen2.5-VL's [16, 24, 24, 0] of its 64 pairs.
    rope_sections: tuple[int, int, int, int] = (2, 3, 3, 0)
    rms_eps: float = 1e-6
    rope_freq_base: float = 1_000_000.0
    # Qwen3-VL: the first n text layers each add one more slice of an image token's embedding
    # (a "deepstack" feature of a vision layer), so image embeddings are (1 + n) * n_embd wide.
    n_deepstack_layers: int = 0


def write_qwen_vl_text(path: pathlib.Path, arch: str, spec: QwenVlSpec, seed: int,
                       control_tokens: Sequence[str] = QWEN_VL_CONTROL_TOKENS) -> pathlib.Path:
    """The text side of Qwen2-VL / Qwen2.5-VL (`qwen2vl`: Qwen2, q/k/v biases, M-RoPE), of Qwen3-VL
    (`qwen3vl`: Qwen3, q/k norms, interleaved M-RoPE, deepstack inputs) and of InternVL 3's small
    sizes (`qwen2`: Qwen2 with plain RoPE): GQA and ChatML in all."""
    tokens, scores, types = build_vocab(control_tokens)
    normal = legacy_normal(np.random.RandomState(seed))
    e, f = spec.n_embd, spec.n_ff
    hd = e // spec.n_head
    kv_out = spec.n_head_kv * hd
    mrope = arch != "qwen2"
    assert not mrope or 2 * sum(spec.rope_sections) == hd, "M-RoPE sections cover the head's rotary pairs"
    qwen3 = arch == "qwen3vl"

    kind = "Qwen3-VL" if qwen3 else "Qwen2.5-VL" if mrope else "InternVL"
    w = _writer(path, arch, kind, context_length=spec.context_length, n_embd=e,
                n_layer=spec.n_layer, n_ff=f, n_head=spec.n_head, n_head_kv=spec.n_head_kv)
    w.add_layer_norm_rms_eps(spec.rms_eps)
    w.add_rope_freq_base(spec.rope_freq_base)
    if mrope:
        w.add_rope_dimension_sections(list(spec.rope_sections))
    if qwen3:
        w.add_uint32(f"{arch}.n_deepstack_layers", spec.n_deepstack_layers)
    # Qwen's tokenizer adds no BOS: the template's first <|im_start|> opens the prompt.
    _add_vocab(w, tokens, scores, types, space_prefix=False, template=CHATML_TEMPLATE, add_bos=False)

    w.add_tensor("token_embd.weight", normal((len(tokens), e), 1.0))
    for i in range(spec.n_layer):
        p = f"blk.{i}"
        w.add_tensor(f"{p}.attn_norm.weight", np.ones(e, np.float32))
        for proj, n_out, std in (("attn_q", e, 0.3), ("attn_k", kv_out, 0.3), ("attn_v", kv_out, e ** -0.5)):
            w.add_tensor(f"{p}.{proj}.weight", normal((n_out, e), std))
            if not qwen3:
                w.add_tensor(f"{p}.{proj}.bias", normal((n_out,), 0.02))
        if qwen3:
            w.add_tensor(f"{p}.attn_q_norm.weight", np.ones(hd, np.float32))
            w.add_tensor(f"{p}.attn_k_norm.weight", np.ones(hd, np.float32))
        w.add_tensor(f"{p}.attn_output.weight", normal((e, e), 2 * e ** -0.5))
        w.add_tensor(f"{p}.ffn_norm.weight", np.ones(e, np.float32))
        w.add_tensor(f"{p}.ffn_gate.weight", normal((f, e), e ** -0.5))
        w.add_tensor(f"{p}.ffn_up.weight", normal((f, e), e ** -0.5))
        w.add_tensor(f"{p}.ffn_down.weight", normal((e, f), f ** -0.5))
    w.add_tensor("output_norm.weight", np.ones(e, np.float32))
    w.add_tensor("output.weight", _output(normal, types, e))
    finish(w)
    return path


def write_qwen2vl_text(path: pathlib.Path, spec: QwenVlSpec = QwenVlSpec(), seed: int = TEXT_SEED + 3) -> pathlib.Path:
    return write_qwen_vl_text(path, "qwen2vl", spec, seed)


def write_qwen2_text(path: pathlib.Path, spec: QwenVlSpec = QwenVlSpec(), seed: int = TEXT_SEED + 8,
                     control_tokens: Sequence[str] = ()) -> pathlib.Path:
    return write_qwen_vl_text(path, "qwen2", spec, seed, control_tokens)


def write_qwen3vl_text(path: pathlib.Path, spec: QwenVlSpec = QwenVlSpec(rope_sections=(3, 3, 2, 0), n_deepstack_layers=1),
                       seed: int = TEXT_SEED + 5) -> pathlib.Path:
    return write_qwen_vl_text(path, "qwen3vl", spec, seed)
