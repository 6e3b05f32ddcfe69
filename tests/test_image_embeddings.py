"""Image embeddings never reach the KV cache with NaN or infinity in them: a projector whose
weights make them is refused with ImageError, and Pixtral's break rows, which the pinned
llama.cpp builds from memory it never initialises, are repaired (csrc/ecso/image_embeddings.hpp).

The second claim is tested by running every family with every buffer ggml allocates filled with
NaN first (an LD_PRELOAD shim over posix_memalign, ggml's CPU allocator on Linux): the tokens must
be those of a normal run, and llama.cpp's own path must still show the defect, or the shim proved
nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ecso_edge
from ecso_edge import EcsoConfig, ImageError, Session
from gguf_mutate import Gguf

POISON_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include <stddef.h>
int posix_memalign(void ** out, size_t align, size_t size) {
    static int (*real)(void **, size_t, size_t);
    if (!real) real = (int (*)(void **, size_t, size_t)) dlsym(RTLD_NEXT, "posix_memalign");
    int rc = real(out, align, size);
    if (rc == 0) memset(*out, 0xFF, size); /* 0xFFFFFFFF is a NaN */
    return rc;
}
"""

# Runs in a child: every family's four steps, and llama.cpp's own encoding of the Pixtral image.
RUN_FAMILIES = textwrap.dedent("""
    import ctypes, json, sys
    import numpy as np
    import ecso_edge
    import llama_cpp, llama_cpp.mtmd_cpp as mtmd

    pairs = json.loads(sys.argv[1])
    image = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = {}
    for family, (text, mmproj) in pairs.items():
        model = ecso_edge.Model(text, mmproj, n_ctx=1024, n_threads=1)
        config = ecso_edge.EcsoConfig(verdict_override=True)
        r = ecso_edge.Session(model, config).run(image, "What is shown?", max_tokens=8)
        out[family] = [s.tokens for s in r.steps]

    text, mmproj = pairs["pixtral"]
    llama_cpp.llama_backend_init()
    lm = llama_cpp.llama_model_load_from_file(text.encode(), llama_cpp.llama_model_default_params())
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.warmup, params.n_threads = False, False, 1
    ctx = mtmd.mtmd_init_from_file(mmproj.encode(), lm, params)
    bitmap = mtmd.mtmd_bitmap_init(64, 64, image.ctypes.data_as(ctypes.POINTER(ctypes.c_ubyte)))
    chunks = mtmd.mtmd_input_chunks_init()
    marker = mtmd.mtmd_default_marker()
    text_part = mtmd.mtmd_input_text(marker, len(marker), False, True)
    assert mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text_part), (ctypes.c_void_p * 1)(bitmap), 1) == 0
    n_embd = llama_cpp.llama_model_n_embd(lm)
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        if mtmd.mtmd_input_chunk_get_n_tokens(chunk) > 1:
            n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            assert mtmd.mtmd_encode_chunk(ctx, chunk) == 0
            embd = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(ctx), shape=(n * n_embd,)).reshape(n, n_embd)
            out["llama.cpp pixtral non-finite rows"] = np.where(~np.isfinite(embd).all(axis=1))[0].tolist()
    print(json.dumps(out))
""")


def test_a_projector_that_makes_nan_is_refused(tiny_paths: tuple[Path, Path], tmp_path: Path,
                                               image: np.ndarray) -> None:
    text, mmproj = tiny_paths
    g = Gguf.read(mmproj)
    bias = g.tensors["mm.2.bias"]
    g.set_tensor("mm.2.bias", np.full_like(bias, np.nan)).write(tmp_path / "nan-mmproj.gguf")
    session = Session(ecso_edge.Model(text, tmp_path / "nan-mmproj.gguf", n_threads=1, n_ctx=512))
    with pytest.raises(ImageError, match=r"nan-mmproj\.gguf.*returned NaN or infinity in \d+ of the image's \d+"):
        session.run(np.asarray(image), "What is shown?", max_tokens=4)


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("cc") is None,
                    reason="the NaN-filling allocator is an LD_PRELOAD shim built with cc, on Linux")
def test_memory_full_of_nan_changes_no_familys_tokens(family_pairs: dict[str, tuple[Path, Path]],
                                                      tmp_path: Path) -> None:
    (tmp_path / "poison.c").write_text(POISON_SHIM)
    shim = tmp_path / "poison.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(tmp_path / "poison.c"), "-ldl"], check=True)
    pairs = json.dumps({f: [str(t), str(m)] for f, (t, m) in family_pairs.items()})

    def run(env: dict[str, str]) -> dict[str, list]:
        proc = subprocess.run([sys.executable, "-c", RUN_FAMILIES, pairs], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.splitlines()[-1])

    normal = run({})
    poisoned = run({"LD_PRELOAD": str(shim)})
    # the shim works, and llama.cpp's own Pixtral path still reads memory it never initialised
    assert normal["llama.cpp pixtral non-finite rows"] == []
    assert poisoned["llama.cpp pixtral non-finite rows"], "the upstream defect is gone: the repair can go"
    assert {f: poisoned[f] for f in family_pairs} == {f: normal[f] for f in family_pairs}
    assert all(all(steps) for steps in (normal[f] for f in family_pairs))
