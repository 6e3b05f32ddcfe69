// The crash-safe check for projector types that gguf_check.cpp does not validate tensor by tensor:
// the ecso-check-projector program loads the file in a child process, and a pass is cached by the
// file's identity and the llama.cpp build's, so only a projector's first load pays for it. Why a
// child process and not a table per type: docs/projector-validation.md.
#pragma once

#include <string>

namespace ecso {

struct ProbeOptions {
    bool use_gpu = false;
    int32_t n_threads = 1;
    std::string flash_attn = "auto";  // auto | on | off, as the projector will be loaded
};

// How the projector passed the check.
enum class ProbeOutcome {
    kChecked,  // the child process loaded it
    kCached,   // an earlier pass of the same file and llama.cpp build
};

// Throws ModelLoadError (naming the file, what llama.cpp said and the signal) when the child
// process failed or crashed, and when ecso-check-projector cannot be found or started.
ProbeOutcome probe_projector(const std::string & text_model_path, const std::string & mmproj_path,
                             const ProbeOptions & options);

// Where passes are cached: $ECSO_CACHE_DIR, else $XDG_CACHE_HOME/ecso-edge, else ~/.cache/ecso-edge.
std::string probe_cache_dir();

}  // namespace ecso
