"""The C++ embedder's door: ecso/ecso.hpp compiles with only the repository's csrc/ on the include
path, so an application needs no llama.cpp, mtmd or ggml header to use the core, and no such
header is reached through it."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"

# Uses the public types the way an application does, so a header that only forward-declares what
# the application needs would not compile either.
APP = """
#include "ecso/ecso.hpp"

#include <memory>
#include <string>

int run(const std::string & text, const std::string & mmproj) {
    ecso::ModelOptions options;
    options.n_ctx = 2048;
    auto model = std::make_shared<const ecso::Model>(text, mmproj, options);
    ecso::EcsoConfig config;
    ecso::EcsoSession session(model, config, 2);
    ecso::RgbImage image{8, 8, std::vector<uint8_t>(8 * 8 * 3, 0)};
    ecso::CallOptions call;
    call.max_tokens = 4;
    const ecso::EcsoResult result = session.run(image, "hello", call);
    ecso::Conversation messages{{"user", {{"hi", nullptr}}}};
    const ecso::EcsoResult chat = session.chat(messages, call);
    const ecso::EngineStats stats = session.engine_stats();
    const ecso::CacheStats cache = session.cache_stats();
    const std::vector<int32_t> tokens = model->tokenize("x", false, false);
    return static_cast<int>(result.answer.size() + chat.answer.size() + stats.decode_calls +
                            cache.conversations + tokens.size() + session.n_ctx());
}
"""


def compiler() -> list[str]:
    # As CMake picks it: the CXX environment variable, else c++.
    cxx = shlex.split(os.environ.get("CXX", "c++"))
    assert cxx and shutil.which(cxx[0]), f"no C++ compiler found (CXX={os.environ.get('CXX')!r}, c++ not on PATH)"
    return cxx


def compile_only(source: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*compiler(), "-std=c++17", "-fsyntax-only", f"-I{CSRC}", *extra, str(source)],
        capture_output=True, text=True, timeout=300, check=False)


def test_ecso_hpp_compiles_with_only_csrc_on_the_include_path(tmp_path: Path) -> None:
    app = tmp_path / "app.cpp"
    app.write_text(APP)
    done = compile_only(app)
    assert done.returncode == 0, done.stderr


def test_no_llama_cpp_header_is_reached_through_ecso_hpp(tmp_path: Path) -> None:
    # A llama.h installed system-wide would let the compile above pass with a leak: list every
    # header the door reaches and look for llama.cpp's by name.
    app = tmp_path / "app.cpp"
    app.write_text('#include "ecso/ecso.hpp"\n')
    done = subprocess.run([*compiler(), "-std=c++17", "-M", f"-I{CSRC}", str(app)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    headers = [Path(h).name for h in done.stdout.replace("\\\n", " ").split()[1:]]
    assert "ecso.hpp" in headers
    leaked = [h for h in headers if h.startswith(("llama", "mtmd", "ggml", "gguf.h", "clip"))]
    assert not leaked, f"ecso/ecso.hpp reaches llama.cpp headers: {leaked}"


@pytest.mark.parametrize("internal", ["ecso/model_impl.hpp", "ecso/decoding_engine.hpp"])
def test_internal_headers_need_llama_cpp(tmp_path: Path, internal: str) -> None:
    # The control: with csrc/ alone on the path, a header that does include llama.cpp fails, so
    # the passing compile above means no llama.cpp header was needed.
    probe = tmp_path / "probe.cpp"
    probe.write_text('#if __has_include("llama.h")\n#error llama.h is on the default include path\n#endif\n')
    if compile_only(probe).returncode != 0:
        pytest.skip("this machine has llama.h on its default include path; the -M check above still applies")
    src = tmp_path / "internal.cpp"
    src.write_text(f'#include "{internal}"\n')
    done = compile_only(src)
    assert done.returncode != 0
    assert "llama" in done.stderr or "mtmd" in done.stderr
