// Tensor-by-tensor validation of LLaVA-style projectors (see llava_projector_check.hpp).
#include "ecso/llava_projector_check.hpp"


namespace ecso {
namespace {

// A 2-D weight [in, out] in ggml order; `in_dim`/`out_dim` < 0 means "any".
std::array<int64_t, 4> require_matrix(const GgufFile & f, const std::string & name, int64_t in_dim, int64_t out_dim) {
    const auto ne = f.require_tensor(name);
    const bool ok = ne[2] == 1 && ne[3] == 1 && (in_dim < 0 || ne[0] == in_dim) && (out_dim < 0 || ne[1] == out_dim);
    if (!ok) {
        f.shape_error(name, ne,
                      "[" + (in_dim < 0 ? std::string("any") : std::to_string(in_dim)) + ", " +
                          (out_dim < 0 ? std::string("any") : std::to_string(out_dim)) + "]");
    }
    return ne;
}

// A 1-D tensor (bias, norm weight, class embedding). clip.cpp adds or multiplies these into f32
// activations, and ggml's CPU binary ops abort on an f16 or quantized operand, so they must be f32
// (llama.cpp's converters always store 1-D tensors as f32).
void require_vector(const GgufFile & f, const std::string & name, int64_t len) {
    const auto ne = f.require_tensor(name);
    if (ne[0] != len || ne[1] != 1 || ne[2] != 1 || ne[3] != 1) {
        f.shape_error(name, ne, "[" + std::to_string(len) + "]");
    }
    const ggml_type type = f.tensor_type(name);
    if (type != GGML_TYPE_F32) {
        fail(f.role(), f.path(), "tensor '" + name + "' is " + ggml_type_name(type) + " but must be f32",
             "The file was converted incorrectly (1-D tensors must stay f32); re-convert it with llama.cpp's converter");
    }
}

void optional_vector(const GgufFile & f, const std::string & name, int64_t len) {
    if (f.has_tensor(name)) {
        require_vector(f, name, len);
    }
}

}  // namespace

// The ViT body shared by the LLaVA family of projectors (clip.cpp's loader and llava graph).
void check_vision_tower(const GgufFile & f, ProjectorInfo & info) {
    const std::string v = "clip.vision.";
    info.image_size = f.require_int(v + "image_size", 1, 8192);
    info.patch_size = f.require_int(v + "patch_size", 1, 1024);
    info.vision_n_embd = f.require_int(v + "embedding_length", 1, 1 << 16);
    const int64_t n_ff = f.require_int(v + "feed_forward_length", 1, 1 << 20);
    info.n_blocks = f.require_int(v + "block_count", 1, 1024);
    const int64_t n_head = f.require_int(v + "attention.head_count", 1, 4096);
    f.require_float(v + "attention.layer_norm_epsilon");  // its range: check_projector, for every type
    f.require_array(v + "image_mean", GGUF_TYPE_FLOAT32, 3);
    f.require_array(v + "image_std", GGUF_TYPE_FLOAT32, 3);
    const int64_t n_embd = info.vision_n_embd;
    if (n_embd % n_head != 0) {
        fail(f.role(), f.path(),
             "vision embedding_length " + std::to_string(n_embd) + " is not divisible by head_count " +
                 std::to_string(n_head),
             "The file is malformed");
    }

    const auto patch = f.require_tensor("v.patch_embd.weight");
    if (patch[0] != info.patch_size || patch[1] != info.patch_size || patch[2] != 3 || patch[3] != n_embd) {
        f.shape_error("v.patch_embd.weight", patch,
                      "[" + std::to_string(info.patch_size) + ", " + std::to_string(info.patch_size) + ", 3, " +
                          std::to_string(n_embd) + "]");
    }
    optional_vector(f, "v.patch_embd.bias", n_embd);
    const bool has_class = f.has_tensor("v.class_embd");
    if (has_class) {
        // f32 is also what clip.cpp's concat with the f32 patch embeddings asserts
        require_vector(f, "v.class_embd", n_embd);
    }
    const int64_t side = info.image_size / info.patch_size;
    if (side < 1) {
        // no patch fits: mtmd GGML_ASSERTs n_tokens > 0 when the image is decoded (found by the fuzz suite)
        fail(f.role(), f.path(),
             "image_size " + std::to_string(info.image_size) + " is smaller than patch_size " +
                 std::to_string(info.patch_size) + ": the image would have no patches",
             "The file is malformed");
    }
    const int64_t n_pos = side * side + (has_class ? 1 : 0);
    const auto pos = f.require_tensor("v.position_embd.weight");
    if (pos[0] != n_embd || pos[1] < n_pos || pos[2] != 1 || pos[3] != 1) {
        f.shape_error("v.position_embd.weight", pos,
                      "[" + std::to_string(n_embd) + ", >=" + std::to_string(n_pos) + "]");
    }
    optional_vector(f, "v.pre_ln.weight", n_embd);
    optional_vector(f, "v.pre_ln.bias", n_embd);
    optional_vector(f, "v.post_ln.weight", n_embd);
    optional_vector(f, "v.post_ln.bias", n_embd);

    for (int64_t il = 0; il < info.n_blocks; ++il) {
        const std::string b = "v.blk." + std::to_string(il) + ".";
        for (const char * proj : {"attn_q", "attn_k", "attn_v", "attn_out"}) {
            require_matrix(f, b + proj + ".weight", n_embd, n_embd);
            optional_vector(f, b + proj + ".bias", n_embd);
        }
        // clip.cpp swaps up/down for old LLaVA exports, so either orientation is valid.
        const auto up = f.require_tensor(b + "ffn_up.weight");
        const auto down = f.require_tensor(b + "ffn_down.weight");
        const bool straight = up[0] == n_embd && up[1] == n_ff && down[0] == n_ff && down[1] == n_embd;
        const bool swapped = up[0] == n_ff && up[1] == n_embd && down[0] == n_embd && down[1] == n_ff;
        if (!straight && !swapped) {
            f.shape_error(b + "ffn_up.weight", up,
                          "[" + std::to_string(n_embd) + ", " + std::to_string(n_ff) + "] with ffn_down the transpose");
        }
        if (f.has_tensor(b + "ffn_up.bias")) {
            require_vector(f, b + "ffn_up.bias", straight ? n_ff : n_embd);
        }
        if (f.has_tensor(b + "ffn_down.bias")) {
            require_vector(f, b + "ffn_down.bias", straight ? n_embd : n_ff);
        }
        for (const char * ln : {"ln1", "ln2"}) {
            optional_vector(f, b + ln + ".weight", n_embd);
            optional_vector(f, b + ln + ".bias", n_embd);
        }
    }
}

// LLaVA-1.5's two-layer MLP (mm.0 -> GELU -> mm.2), or the Yi-style variant with norms (mm.0..4).
// LLaVA-1.6 (LLaVA-NeXT): the resolutions an image may be sliced to, as (width, height) pairs.
// mtmd GGML_ASSERTs when a resolution is not a whole number of tiles (measured: [33, 65] and
// [8, 8] with 32 px tiles abort), and a huge one never finishes preprocessing.
void check_grid_pinpoints(const GgufFile & f, ProjectorInfo & info) {
    const std::string key = "clip.vision.image_grid_pinpoints";
    const auto pinpoints = f.get_int32_array(key);
    if (!pinpoints) {
        return;
    }
    constexpr int64_t kMaxTiles = 8;  // per side; LLaVA-1.6's own grids go to 3 or 4
    const int64_t tile = info.image_size;
    if (pinpoints->size() < 2 || pinpoints->size() % 2 != 0 || pinpoints->size() > 256) {
        fail(f.role(), f.path(),
             "metadata key '" + key + "' holds " + std::to_string(pinpoints->size()) +
                 " values; it must be (width, height) pairs, 1 to 128 of them",
             "The file is malformed");
    }
    for (const int64_t v : *pinpoints) {
        if (v < tile || v % tile != 0 || v > kMaxTiles * tile) {
            fail(f.role(), f.path(),
                 "metadata key '" + key + "' holds the resolution " + std::to_string(v) +
                     ", which is not a multiple of the " + std::to_string(tile) + " px image size from 1 to " +
                     std::to_string(kMaxTiles) + " tiles",
                 "The file is malformed (mtmd would abort slicing images with it)");
        }
    }
    info.grid_pinpoints = *pinpoints;
}

void check_llava_mlp(const GgufFile & f, ProjectorInfo & info) {
    const auto mm0 = require_matrix(f, "mm.0.weight", -1, -1);
    if (mm0[0] % info.vision_n_embd != 0) {
        // granite-style stacked feature layers multiply the input width
        f.shape_error("mm.0.weight", mm0, "[a multiple of " + std::to_string(info.vision_n_embd) + ", any]");
    }
    require_vector(f, "mm.0.bias", mm0[1]);
    if (f.has_tensor("mm.3.weight")) {
        require_vector(f, "mm.1.weight", mm0[1]);
        require_vector(f, "mm.1.bias", mm0[1]);
        const auto mm3 = require_matrix(f, "mm.3.weight", mm0[1], -1);
        require_vector(f, "mm.3.bias", mm3[1]);
        require_vector(f, "mm.4.weight", mm3[1]);
        require_vector(f, "mm.4.bias", mm3[1]);
        info.output_n_embd = mm3[1];
    } else {
        // clip_n_mmproj_embd() reads mm.2.weight unconditionally for this projector type.
        const auto mm2 = require_matrix(f, "mm.2.weight", mm0[1], -1);
        require_vector(f, "mm.2.bias", mm2[1]);
        info.output_n_embd = mm2[1];
    }
    info.fully_validated = true;
}

}  // namespace ecso
