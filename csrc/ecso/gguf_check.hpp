// Validation of GGUF files before llama.cpp or mtmd sees them, in this process. mtmd trusts its
// projector file (a missing tensor is a NULL dereference inside clip.cpp): for LLaVA's types every
// tensor and key its loader dereferences is checked here; other types are checked by loading them
// in a child process first (projector_probe.hpp). A bad file becomes a ModelLoadError.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ecso {

// What the runtime needs to know about a text model, read from its GGUF metadata only.
struct TextModelInfo {
    std::string path;
    std::string architecture;  // general.architecture, e.g. "llama"
    int64_t n_embd = 0;        // {arch}.embedding_length
};

// What the runtime needs to know about a vision projector (mmproj).
struct ProjectorInfo {
    std::string path;
    std::string projector_type;  // clip.projector_type, e.g. "mlp"
    int64_t image_size = 0;
    int64_t patch_size = 0;
    int64_t vision_n_embd = 0;
    int64_t n_blocks = 0;
    int64_t output_n_embd = 0;   // 0 when the projector type is not one we can size
    std::vector<int64_t> grid_pinpoints;  // LLaVA-1.6 slicing resolutions (w, h pairs); empty: no slices
    // Pixtral's [IMG_BREAK] embedding (v.token_embd.img_break), which its graph adds at the end of
    // every row of patches but the last; empty for other projectors. See image_embeddings.hpp.
    std::vector<float> image_break_row;
    bool fully_validated = false;  // every tensor checked here (LLaVA); else the child-process check is due
};

// Throws ModelLoadError (naming the file, the problem and the fix) if `path` is not a usable
// text-model GGUF; this includes a projector passed in the text model's place.
TextModelInfo check_text_model(const std::string & path);

// Throws ModelLoadError if `path` is not a usable vision projector for `text`: not GGUF,
// truncated, a text model in the projector's place, a key or tensor missing, misshapen or of a
// type llama.cpp would abort on (a key clip.cpp reads stored as another GGUF type, a 1-D tensor
// not in f32), or an output size that differs from the text model's embedding size. Projector
// types other than LLaVA's mlp/mlp_norm get the key and 1-D tensor checks only here.
ProjectorInfo check_projector(const std::string & path, const TextModelInfo & text);

}  // namespace ecso
