"""The options a user types into Model, EcsoConfig and Session calls: every bad value is a
TypeError (wrong type) or a ConfigError (out of range) that names the option, never an abort, a
hang, or pybind11's list of C++ signatures. Includes regression tests of
what the option fuzzing found (docs/robustness.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ecso_edge
from ecso_edge import ConfigError, EcsoConfig, Session


@pytest.mark.parametrize("n_batch", [1, 2, 3])
def test_a_batch_smaller_than_the_sessions_sequences_is_refused(tiny_paths: tuple[Path, Path],
                                                                 n_batch: int) -> None:
    # used to abort the process: GGML_ASSERT(n_outputs_max <= cparams.n_outputs_max) in Session()
    with pytest.raises(ConfigError, match=rf"n_batch must be in 4\.\.2147483647 \(got {n_batch}\)"):
        ecso_edge.Model(*tiny_paths, n_batch=n_batch)


def test_the_smallest_batch_runs_both_branches_and_shadow_judging(tiny_paths: tuple[Path, Path],
                                                                   image: np.ndarray) -> None:
    model = ecso_edge.Model(*tiny_paths, n_batch=4, n_threads=1, n_ctx=512)
    for config in (EcsoConfig(verdict_override=True), EcsoConfig(shadow_judge=True, verdict_override=True),
                   EcsoConfig(shadow_judge=True, ignore_eos=True, verdict_override=False)):
        r = Session(model, config).run(image, "What is this?", max_tokens=12)
        assert len(r.steps) == (4 if r.unsafe else 2)
    # the image (16 tokens) goes in over four batches of 4 and still matches a large batch
    big = ecso_edge.Model(*tiny_paths, n_threads=1, n_ctx=512)
    one = Session(model, EcsoConfig(verdict_override=True)).run(image, "What is this?", max_tokens=12)
    other = Session(big, EcsoConfig(verdict_override=True)).run(image, "What is this?", max_tokens=12)
    assert [len(s.tokens) for s in one.steps] == [len(s.tokens) for s in other.steps]


def test_threads_above_the_hardware_threads_are_clamped(tiny_paths: tuple[Path, Path], image: np.ndarray) -> None:
    # n_threads=10000 used to hang the first decode (10,000 OpenMP threads)
    model = ecso_edge.Model(*tiny_paths, n_threads=10000, n_threads_batch=10**9, n_ctx=256)
    hardware = os.cpu_count() or 1
    assert model.n_threads == hardware and model.n_threads_batch == hardware
    assert len(Session(model).answer(image, "What is this?", max_tokens=2).steps[0].tokens) <= 2


def test_a_context_larger_than_the_machines_memory_is_refused_at_load(tiny_paths: tuple[Path, Path]) -> None:
    # its KV cache used to fail with std::bad_alloc at the first session, as a bare EcsoError; a
    # ResourceError as a context llama.cpp cannot allocate is (tests/test_context_memory.py)
    with pytest.raises(ecso_edge.ResourceError, match=r"^n_ctx 2147483647 needs a KV cache of at least 1024\.0 GiB "
                       r"for text model '.*tiny-llava-text\.gguf', more than this machine's [0-9.]+ GiB of memory\. "
                       r"Lower n_ctx \(the model was trained on 4096 tokens\)$"):
        ecso_edge.Model(*tiny_paths, n_ctx=2**31 - 1, n_threads=1)


def test_a_large_context_that_fits_still_loads(tiny_paths: tuple[Path, Path]) -> None:
    # 2^20 cells of the tiny pair's cache are 512 MiB: the check refuses only what cannot fit
    assert ecso_edge.Model(*tiny_paths, n_ctx=2**20, n_threads=1).n_threads == 1


@pytest.mark.parametrize("option, value, error, message", [
    ("n_ctx", -1, ConfigError, r"n_ctx must be in 16\.\.2147483647 \(got -1\)"),
    ("n_ctx", 2**40, ConfigError, r"n_ctx must be in 16\.\.2147483647"),
    ("n_ctx", 512.0, TypeError, r"n_ctx must be an int, not float"),
    ("n_batch", True, TypeError, r"n_batch must be an int, not bool"),
    ("n_threads", 0, ConfigError, r"n_threads must be in 1\.\.2147483647 \(got 0\) \(None: the default\)"),
    ("n_threads", -3, ConfigError, r"n_threads must be in 1\.\.2147483647"),
    ("n_threads_batch", "2", TypeError, r"n_threads_batch must be an int, not str"),
    ("n_gpu_layers", -2, ConfigError, r"n_gpu_layers must be in -1\.\.2147483647 \(got -2\) \(-1 offloads"),
    ("seed", -1, ConfigError, r"seed must be in 0\.\.4294967295"),
    ("seed", 2**32, ConfigError, r"seed must be in 0\.\.4294967295"),
    ("mmproj_gpu", 1, TypeError, r"mmproj_gpu must be True or False, not int"),
    ("flash_attn", "yes", TypeError, r"flash_attn must be True or False, not str"),
    ("repack", 0, TypeError, r"repack must be True or False, not int"),
    ("verbose", None, TypeError, r"verbose must be True or False, not NoneType"),
])
def test_model_options_are_checked(tiny_paths: tuple[Path, Path], option: str, value: Any,
                                   error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ecso_edge.Model(*tiny_paths, **{option: value})


def test_model_paths_must_be_paths(tiny_paths: tuple[Path, Path]) -> None:
    with pytest.raises(TypeError, match="text_model_path must be a path"):
        ecso_edge.Model(42, tiny_paths[1])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="mmproj_path contains a NUL character"):
        ecso_edge.Model(tiny_paths[0], str(tiny_paths[1]) + "\0x")


@pytest.mark.parametrize("value, error", [(0, ConfigError), (-1, ConfigError), (2**31, ConfigError),
                                          (10**12, ConfigError), (1.5, TypeError), (True, TypeError),
                                          ("8", TypeError), (None, TypeError)])
@pytest.mark.parametrize("call", ["run", "answer", "stream"])
def test_max_tokens_is_checked_before_any_work(tiny_model: ecso_edge.Model, image: np.ndarray, value: Any,
                                               error: type[Exception], call: str) -> None:
    # 10**12 used to leak a pybind11 TypeError listing the C++ signature (and a 500 in the server)
    with pytest.raises(error, match="max_tokens must be"):
        getattr(Session(tiny_model), call)(image, "What is this?", max_tokens=value)


def test_call_arguments_of_the_wrong_type_are_named(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    session = Session(tiny_model)
    with pytest.raises(TypeError, match="on_token must be a callable or None, not int"):
        session.run(image, "q", on_token=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_progress must be a callable or None, not str"):
        session.answer(image, "q", on_progress="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cancel must be an ecso_edge.CancelToken or None, not bool"):
        session.judge(image, "q", "r", cancel=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be an ecso_edge.Model, not str"):
        Session("model.gguf")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config must be an ecso_edge.EcsoConfig or None, not dict"):
        Session(tiny_model, {"reuse_kv": False})  # type: ignore[arg-type]


@pytest.mark.parametrize("field, value, message", [
    ("max_tokens_judge", 2**40, r"EcsoConfig field 'max_tokens_judge' takes an int in 1\.\.2147483647, "
                                r"not 1099511627776 \(int\)"),
    ("max_tokens_answer", 1.5, r"'max_tokens_answer' takes None or an int in 1\.\.2147483647, not 1\.5 \(float\)"),
    ("seed", -1, r"'seed' takes None or an int in 0\.\.4294967295, not -1 \(int\)"),
    ("response_cut_chars", -5, r"'response_cut_chars' takes an int in 1\.\.18446744073709551615"),
    ("top_k", "a", r"'top_k' takes an int in 0\.\.2147483647, not 'a' \(str\)"),
    ("logit_bias", {"x": 1.0}, r"'logit_bias' takes a dict \{token id \(int\): bias \(float\)\}"),
    ("reuse_kv", "no", r"'reuse_kv' takes True or False, not 'no' \(str\)"),
])
def test_config_fields_of_the_wrong_type_say_what_they_take(field: str, value: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message) as info:
        EcsoConfig(**{field: value})
    assert "incompatible" not in str(info.value) and "->" not in str(info.value)
    with pytest.raises(TypeError, match=message):
        EcsoConfig().replace(**{field: value})


@pytest.mark.parametrize("fields, message", [
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    (dict(temperature=float("inf")), "temperature must be a finite number >= 0"),
    (dict(top_p=float("nan")), r"top_p must be in \(0, 1\]"),
    (dict(logit_bias={5: float("nan")}), "logit_bias of token 5 is NaN"),
])
def test_config_non_finite_floats_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EcsoConfig(**fields)


def test_the_config_binding_lists_every_field() -> None:
    # the binding keeps its own list (for to_dict, replace, pickling and the messages above)
    properties = {name for name in dir(EcsoConfig) if isinstance(getattr(EcsoConfig, name), property)}
    assert set(EcsoConfig.field_names()) == properties
    assert list(EcsoConfig().to_dict()) == EcsoConfig.field_names()


def test_assigning_a_config_field_of_the_wrong_type_says_what_it_takes() -> None:
    # found by the option campaign: attribute assignment leaked pybind11's signature list
    config = EcsoConfig()
    with pytest.raises(TypeError, match=r"EcsoConfig field 'caption_template' takes a str, not None \(NoneType\)"):
        config.caption_template = None  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"'chat_template' takes a str or None, not '\\udcff' \(str\)"):
        config.chat_template = "\udcff"
    with pytest.raises(TypeError, match="EcsoConfig has no field 'nope'"):
        config.nope = 1  # type: ignore[attr-defined]
    config.top_k = 5
    assert config.top_k == 5 and config == EcsoConfig(top_k=5)


def test_a_positive_infinite_logit_bias_is_refused_and_minus_infinity_bans() -> None:
    with pytest.raises(ConfigError, match=r"logit_bias of token 1 is \+inf; use a finite bias, or -inf"):
        EcsoConfig(logit_bias={1: float("inf")})
    assert EcsoConfig(logit_bias={1: float("-inf")}).logit_bias == {1: float("-inf")}
    with pytest.raises(ConfigError, match=r"response_cut_chars must be at least 1 \(got 0\)"):
        EcsoConfig(response_cut_chars=0)
