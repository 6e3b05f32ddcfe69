// GGUF validation for text models and LLaVA-style projectors (see gguf_check.hpp).
#include "ecso/gguf_check.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string_view>
#include <unordered_set>
#include <sys/stat.h>

#include "ecso/errors.hpp"
#include "ecso/logging.hpp"
#include "gguf.h"

namespace ecso {
namespace {

struct GgufDeleter {
    void operator()(gguf_context * ctx) const { gguf_free(ctx); }
};
using GgufPtr = std::unique_ptr<gguf_context, GgufDeleter>;

[[noreturn]] void fail(const std::string & role, const std::string & path, const std::string & problem,
                       const std::string & fix) {
    throw ModelLoadError(role + " '" + path + "': " + problem + (fix.empty() ? "" : ". " + fix));
}

// An opened GGUF file with typed, non-aborting accessors: gguf_get_val_* aborts the process on a
// type mismatch, so every read checks the stored type first.
class GgufFile {
public:
    GgufFile(std::string role, std::string path) : role_(std::move(role)), path_(std::move(path)) {
        struct stat st {};
        if (::stat(path_.c_str(), &st) != 0) {
            fail(role_, path_, "file not found", "Check the path");
        }
        if (!S_ISREG(st.st_mode)) {
            fail(role_, path_, "not a regular file", "Pass the path of a .gguf file");
        }
        file_size_ = static_cast<uint64_t>(st.st_size);
        std::ifstream in(path_, std::ios::binary);
        if (!in) {
            fail(role_, path_, "cannot be opened for reading", "Check the file's permissions");
        }
        std::array<char, 4> magic{};
        in.read(magic.data(), magic.size());
        if (in.gcount() != 4 || std::memcmp(magic.data(), "GGUF", 4) != 0) {
            fail(role_, path_,
                 file_size_ == 0 ? "the file is empty" : "not a GGUF file (wrong magic bytes)",
                 "Pass a llama.cpp GGUF file (convert the model with llama.cpp's convert scripts)");
        }
        clear_log_errors();
        gguf_init_params params{/*no_alloc=*/true, /*ctx=*/nullptr};
        ctx_.reset(gguf_init_from_file(path_.c_str(), params));
        if (!ctx_) {
            fail(role_, path_, "malformed GGUF header, metadata or tensor table" + last_log_suffix(),
                 "The file is damaged or was written by an incompatible tool; re-download or re-convert it");
        }
        check_data_extent();
    }

    const std::string & path() const { return path_; }
    const std::string & role() const { return role_; }

    bool has_key(const std::string & key) const { return gguf_find_key(ctx_.get(), key.c_str()) >= 0; }

    std::optional<std::string> get_string(const std::string & key) const {
        const int64_t id = gguf_find_key(ctx_.get(), key.c_str());
        if (id < 0) {
            return std::nullopt;
        }
        if (gguf_get_kv_type(ctx_.get(), id) != GGUF_TYPE_STRING) {
            fail(role_, path_, "metadata key '" + key + "' should be a string but is " +
                                   gguf_type_name(gguf_get_kv_type(ctx_.get(), id)),
                 "The file is malformed");
        }
        return std::string(gguf_get_val_str(ctx_.get(), id));
    }

    std::optional<int64_t> get_int(const std::string & key) const {
        const int64_t id = gguf_find_key(ctx_.get(), key.c_str());
        if (id < 0) {
            return std::nullopt;
        }
        switch (gguf_get_kv_type(ctx_.get(), id)) {
            case GGUF_TYPE_UINT8: return gguf_get_val_u8(ctx_.get(), id);
            case GGUF_TYPE_INT8: return gguf_get_val_i8(ctx_.get(), id);
            case GGUF_TYPE_UINT16: return gguf_get_val_u16(ctx_.get(), id);
            case GGUF_TYPE_INT16: return gguf_get_val_i16(ctx_.get(), id);
            case GGUF_TYPE_UINT32: return gguf_get_val_u32(ctx_.get(), id);
            case GGUF_TYPE_INT32: return gguf_get_val_i32(ctx_.get(), id);
            case GGUF_TYPE_UINT64: return static_cast<int64_t>(gguf_get_val_u64(ctx_.get(), id));
            case GGUF_TYPE_INT64: return gguf_get_val_i64(ctx_.get(), id);
            default:
                fail(role_, path_, "metadata key '" + key + "' should be an integer but is " +
                                       gguf_type_name(gguf_get_kv_type(ctx_.get(), id)),
                     "The file is malformed");
        }
    }

    int64_t require_int(const std::string & key, int64_t min_value, int64_t max_value) const {
        const auto v = get_int(key);
        if (!v) {
            fail(role_, path_, "required metadata key '" + key + "' is missing",
                 "The file is incomplete or not of the expected kind");
        }
        if (*v < min_value || *v > max_value) {
            fail(role_, path_, "metadata key '" + key + "' has the implausible value " + std::to_string(*v),
                 "The file is malformed");
        }
        return *v;
    }

    double require_float(const std::string & key) const {
        const int64_t id = gguf_find_key(ctx_.get(), key.c_str());
        if (id < 0) {
            fail(role_, path_, "required metadata key '" + key + "' is missing",
                 "The file is incomplete or not of the expected kind");
        }
        const auto type = gguf_get_kv_type(ctx_.get(), id);
        if (type == GGUF_TYPE_FLOAT32) {
            return gguf_get_val_f32(ctx_.get(), id);
        }
        if (type == GGUF_TYPE_FLOAT64) {
            return gguf_get_val_f64(ctx_.get(), id);
        }
        fail(role_, path_, "metadata key '" + key + "' should be a float but is " + gguf_type_name(type),
             "The file is malformed");
    }

    std::optional<bool> get_bool(const std::string & key) const {
        const int64_t id = gguf_find_key(ctx_.get(), key.c_str());
        if (id < 0) {
            return std::nullopt;
        }
        require_type(key, GGUF_TYPE_BOOL);
        return gguf_get_val_bool(ctx_.get(), id);
    }

    // Throws unless `key` is absent or stored with exactly `type`. llama.cpp's clip loader reads
    // its keys with gguf_get_val_<type>, which aborts the process on any other type (even u32 vs i32).
    void require_type(const std::string & key, gguf_type type) const {
        const int64_t id = gguf_find_key(ctx_.get(), key.c_str());
        if (id >= 0 && gguf_get_kv_type(ctx_.get(), id) != type) {
            fail(role_, path_,
                 "metadata key '" + key + "' is stored as " + gguf_type_name(gguf_get_kv_type(ctx_.get(), id)) +
                     " but must be " + gguf_type_name(type),
                 "The file is malformed (llama.cpp would abort reading it); re-convert it with llama.cpp's converter");
        }
    }

    // A required array of at least `min_n` elements of type `elem`.
    void require_array(const std::string & key, gguf_type elem, size_t min_n) const {
        const int64_t id = gguf_find_key(ctx_.get(), key.c_str());
        if (id < 0) {
            fail(role_, path_, "required metadata key '" + key + "' is missing",
                 "The file is incomplete or not of the expected kind");
        }
        const auto type = gguf_get_kv_type(ctx_.get(), id);
        const bool ok = type == GGUF_TYPE_ARRAY && gguf_get_arr_type(ctx_.get(), id) == elem &&
                        gguf_get_arr_n(ctx_.get(), id) >= min_n;
        if (!ok) {
            fail(role_, path_,
                 "metadata key '" + key + "' must be an array of at least " + std::to_string(min_n) + " " +
                     gguf_type_name(elem) + " values",
                 "The file is malformed");
        }
    }

    // An optional array that clip.cpp reads as int32 whatever its stored type (get_arr_int): any
    // other element type is read out of bounds, a string array aborts. nullopt when absent.
    std::optional<std::vector<int64_t>> get_int32_array(const std::string & key) const {
        const int64_t id = gguf_find_key(ctx_.get(), key.c_str());
        if (id < 0) {
            return std::nullopt;
        }
        if (gguf_get_kv_type(ctx_.get(), id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(ctx_.get(), id) != GGUF_TYPE_INT32) {
            fail(role_, path_, "metadata key '" + key + "' must be an array of int32 values",
                 "The file is malformed (llama.cpp reads it as int32 and would crash); re-convert it");
        }
        const size_t n = gguf_get_arr_n(ctx_.get(), id);
        const auto * data = static_cast<const int32_t *>(gguf_get_arr_data(ctx_.get(), id));
        return std::vector<int64_t>(data, data + n);
    }

    // llama.cpp's vocabulary loader GGML_ASSERTs that no token text occurs twice (found by the fuzz suite).
    void require_unique_strings(const std::string & key) const {
        const int64_t id = gguf_find_key(ctx_.get(), key.c_str());
        const size_t n = gguf_get_arr_n(ctx_.get(), id);
        std::unordered_set<std::string_view> seen;
        seen.reserve(n);
        for (size_t i = 0; i < n; ++i) {
            const char * s = gguf_get_arr_str(ctx_.get(), id, i);
            if (!seen.insert(std::string_view(s)).second) {
                fail(role_, path_, "metadata key '" + key + "' holds the token text at index " + std::to_string(i) +
                                       " twice",
                     "The file is malformed");
            }
        }
    }

    // ggml's CPU add/mul abort on an f16 or quantized second operand, and llama.cpp's and
    // clip.cpp's graphs add or multiply every 1-D tensor (norms, biases) into f32 activations;
    // llama.cpp's converters always store 1-D tensors as f32 (found by the fuzz suite).
    void require_one_d_tensors_f32() const {
        const int64_t n = gguf_get_n_tensors(ctx_.get());
        for (int64_t i = 0; i < n; ++i) {
            const ggml_type type = gguf_get_tensor_type(ctx_.get(), i);
            const std::string name = gguf_get_tensor_name(ctx_.get(), i);
            const int64_t * ne = gguf_get_tensor_ne(ctx_.get(), i);
            if (ne[1] == 1 && ne[2] == 1 && ne[3] == 1 && type != GGML_TYPE_F32) {
                fail(role_, path_, "tensor '" + name + "' is " + ggml_type_name(type) + " but must be f32",
                     "The file was converted incorrectly (1-D tensors must stay f32); re-convert it with llama.cpp's "
                     "converter");
            }
        }
    }

    // tokenizer.ggml.token_type holds LLAMA_TOKEN_TYPE_BYTE (6) somewhere.
    bool has_byte_tokens() const {
        const int64_t id = gguf_find_key(ctx_.get(), "tokenizer.ggml.token_type");
        if (id < 0 || gguf_get_kv_type(ctx_.get(), id) != GGUF_TYPE_ARRAY ||
            gguf_get_arr_type(ctx_.get(), id) != GGUF_TYPE_INT32) {
            return false;  // llama.cpp refuses other types itself
        }
        const auto * types = static_cast<const int32_t *>(gguf_get_arr_data(ctx_.get(), id));
        const size_t n = gguf_get_arr_n(ctx_.get(), id);
        return std::find(types, types + n, 6) != types + n;
    }

    bool has_tensor(const std::string & name) const { return gguf_find_tensor(ctx_.get(), name.c_str()) >= 0; }

    // The tensor's shape in ggml order (ne[0] is the innermost dimension); throws if absent.
    std::array<int64_t, 4> require_tensor(const std::string & name) const {
        const int64_t id = gguf_find_tensor(ctx_.get(), name.c_str());
        if (id < 0) {
            fail(role_, path_, "required tensor '" + name + "' is missing",
                 "The file is incomplete or damaged; re-convert or re-download it");
        }
        const int64_t * ne = gguf_get_tensor_ne(ctx_.get(), id);
        return {ne[0], ne[1], ne[2], ne[3]};
    }

    ggml_type tensor_type(const std::string & name) const {
        return gguf_get_tensor_type(ctx_.get(), gguf_find_tensor(ctx_.get(), name.c_str()));
    }

    [[noreturn]] void shape_error(const std::string & name, const std::array<int64_t, 4> & ne,
                                  const std::string & expected) const {
        fail(role_, path_,
             "tensor '" + name + "' has shape [" + std::to_string(ne[0]) + ", " + std::to_string(ne[1]) + ", " +
                 std::to_string(ne[2]) + ", " + std::to_string(ne[3]) + "], expected " + expected,
             "The file is damaged or does not belong to this model");
    }

private:
    // gguf_init_from_file with no_alloc reads no tensor data, so a truncated file would only fail
    // later, inside llama.cpp's loader or mtmd; check that every tensor lies inside the file.
    void check_data_extent() const {
        const uint64_t data_offset = gguf_get_data_offset(ctx_.get());
        const int64_t n = gguf_get_n_tensors(ctx_.get());
        for (int64_t i = 0; i < n; ++i) {
            const uint64_t end = data_offset + gguf_get_tensor_offset(ctx_.get(), i) + gguf_get_tensor_size(ctx_.get(), i);
            if (end > file_size_) {
                fail(role_, path_,
                     "the file is truncated: tensor '" + std::string(gguf_get_tensor_name(ctx_.get(), i)) +
                         "' ends at byte " + std::to_string(end) + " but the file has " + std::to_string(file_size_) +
                         " bytes",
                     "Re-download or re-convert the file");
            }
        }
    }

    std::string role_;
    std::string path_;
    uint64_t file_size_ = 0;
    GgufPtr ctx_;
};

// Keys that clip.cpp's loader (llama-cpp-python 0.3.36) reads with a typed gguf_get_val_*, which
// aborts the process when the stored type differs. Keys it reads as arrays are checked by clip.cpp.
struct KeyType {
    const char * key;
    gguf_type type;
};
constexpr KeyType kClipKeyTypes[] = {
    {"general.name", GGUF_TYPE_STRING},
    {"general.description", GGUF_TYPE_STRING},
    {"clip.has_vision_encoder", GGUF_TYPE_BOOL},
    {"clip.has_audio_encoder", GGUF_TYPE_BOOL},
    {"clip.use_gelu", GGUF_TYPE_BOOL},
    {"clip.use_silu", GGUF_TYPE_BOOL},
    {"clip.projector_type", GGUF_TYPE_STRING},
    {"clip.vision.projector_type", GGUF_TYPE_STRING},
    {"clip.audio.projector_type", GGUF_TYPE_STRING},
    {"clip.vision.mm_patch_merge_type", GGUF_TYPE_STRING},
    {"clip.minicpmv_version", GGUF_TYPE_INT32},
    {"clip.minicpmv_query_num", GGUF_TYPE_UINT32},
    {"clip.vision.image_size", GGUF_TYPE_UINT32},
    {"clip.vision.patch_size", GGUF_TYPE_UINT32},
    {"clip.vision.embedding_length", GGUF_TYPE_UINT32},
    {"clip.vision.feed_forward_length", GGUF_TYPE_UINT32},
    {"clip.vision.block_count", GGUF_TYPE_UINT32},
    {"clip.vision.projection_dim", GGUF_TYPE_UINT32},
    {"clip.vision.attention.head_count", GGUF_TYPE_UINT32},
    {"clip.vision.attention.head_count_kv", GGUF_TYPE_UINT32},
    {"clip.vision.attention.layer_norm_epsilon", GGUF_TYPE_FLOAT32},
    {"clip.vision.projector.scale_factor", GGUF_TYPE_UINT32},
    {"clip.vision.spatial_merge_size", GGUF_TYPE_UINT32},
    {"clip.vision.n_wa_pattern", GGUF_TYPE_UINT32},
    {"clip.vision.window_size", GGUF_TYPE_UINT32},
    {"clip.vision.image_min_pixels", GGUF_TYPE_UINT32},
    {"clip.vision.image_max_pixels", GGUF_TYPE_UINT32},
    {"clip.vision.preproc_image_size", GGUF_TYPE_UINT32},
    {"clip.vision.preproc_min_tiles", GGUF_TYPE_UINT32},
    {"clip.vision.preproc_max_tiles", GGUF_TYPE_UINT32},
    {"clip.vision.sam.block_count", GGUF_TYPE_UINT32},
    {"clip.vision.sam.head_count", GGUF_TYPE_UINT32},
    {"clip.vision.sam.embedding_length", GGUF_TYPE_UINT32},
    {"clip.audio.embedding_length", GGUF_TYPE_UINT32},
    {"clip.audio.feed_forward_length", GGUF_TYPE_UINT32},
    {"clip.audio.block_count", GGUF_TYPE_UINT32},
    {"clip.audio.projection_dim", GGUF_TYPE_UINT32},
    {"clip.audio.attention.head_count", GGUF_TYPE_UINT32},
    {"clip.audio.attention.layer_norm_epsilon", GGUF_TYPE_FLOAT32},
    {"clip.audio.num_mel_bins", GGUF_TYPE_UINT32},
    {"clip.audio.projector.stack_factor", GGUF_TYPE_UINT32},
};

void check_key_types(const GgufFile & f) {
    for (const auto & kt : kClipKeyTypes) {
        f.require_type(kt.key, kt.type);
    }
}

bool trust_unchecked_projectors() {
    const char * v = std::getenv("ECSO_TRUST_PROJECTOR");
    return v != nullptr && std::string(v) == "1";
}

bool looks_like_projector(const GgufFile & f) {
    const auto arch = f.get_string("general.architecture");
    return (arch && *arch == "clip") || f.has_key("clip.has_vision_encoder") || f.has_key("clip.projector_type");
}

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

// The ViT body shared by the LLaVA family of projectors (clip.cpp's loader and llava graph).
void check_vision_tower(const GgufFile & f, ProjectorInfo & info) {
    const std::string v = "clip.vision.";
    info.image_size = f.require_int(v + "image_size", 1, 8192);
    info.patch_size = f.require_int(v + "patch_size", 1, 1024);
    info.vision_n_embd = f.require_int(v + "embedding_length", 1, 1 << 16);
    const int64_t n_ff = f.require_int(v + "feed_forward_length", 1, 1 << 20);
    info.n_blocks = f.require_int(v + "block_count", 1, 1024);
    const int64_t n_head = f.require_int(v + "attention.head_count", 1, 4096);
    const double eps = f.require_float(v + "attention.layer_norm_epsilon");
    if (!std::isfinite(eps) || eps < 0.0 || eps > 1.0) {
        // ggml_norm asserts eps >= 0 (a NaN fails it too)
        fail(f.role(), f.path(), "metadata key '" + v + "attention.layer_norm_epsilon' has the implausible value " +
                                     std::to_string(eps),
             "The file is malformed");
    }
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

}  // namespace

TextModelInfo check_text_model(const std::string & path) {
    GgufFile f("text model", path);
    if (looks_like_projector(f)) {
        fail(f.role(), path, "this is a vision projector (mmproj), not a text model",
             "Pass it as the mmproj argument and the language model GGUF as the text model");
    }
    const auto arch = f.get_string("general.architecture");
    if (!arch || arch->empty()) {
        fail(f.role(), path, "metadata key 'general.architecture' is missing", "The file is not a llama.cpp model");
    }
    TextModelInfo info;
    info.path = path;
    info.architecture = *arch;
    info.n_embd = f.require_int(*arch + ".embedding_length", 1, 1 << 20);
    // llama.cpp GGML_ASSERTs 0 < n_layer <= LLAMA_MAX_LAYERS (512) (found by the fuzz suite)
    f.require_int(*arch + ".block_count", 1, 512);
    if (!f.has_key("tokenizer.ggml.tokens")) {
        fail(f.role(), path, "the file has no tokenizer vocabulary (tokenizer.ggml.tokens)",
             "ecso-edge needs a full text model with its tokenizer, not a vocabulary-less export");
    }
    f.require_array("tokenizer.ggml.tokens", GGUF_TYPE_STRING, 1);
    f.require_unique_strings("tokenizer.ggml.tokens");
    f.require_one_d_tensors_f32();
    // ggml_rms_norm/ggml_norm GGML_ASSERT eps >= 0 at the first decode (found by the fuzz suite)
    for (const char * key : {".attention.layer_norm_rms_epsilon", ".attention.layer_norm_epsilon"}) {
        if (f.has_key(*arch + key)) {
            const double eps = f.require_float(*arch + key);
            if (!std::isfinite(eps) || eps < 0.0 || eps > 1.0) {
                fail(f.role(), path, "metadata key '" + *arch + key + "' has the implausible value " + std::to_string(eps),
                     "The file is malformed");
            }
        }
    }
    // llama.cpp turns byte tokens (<0xNN>) into bytes only for the SPM, BPE and UGM vocabularies and
    // aborts the process for the others (found by the fuzz suite: tokenizer.ggml.model "bert").
    const auto tokenizer = f.get_string("tokenizer.ggml.model");
    if (tokenizer && *tokenizer != "llama" && *tokenizer != "gpt2" && *tokenizer != "t5" && f.has_byte_tokens()) {
        fail(f.role(), path,
             "its '" + *tokenizer + "' vocabulary (tokenizer.ggml.model) has byte tokens, which llama.cpp only "
                 "supports in 'llama', 'gpt2' and 't5' vocabularies",
             "The file is malformed");
    }
    return info;
}

ProjectorInfo check_projector(const std::string & path, const TextModelInfo & text) {
    GgufFile f("projector (mmproj)", path);
    if (!looks_like_projector(f)) {
        const auto arch = f.get_string("general.architecture");
        fail(f.role(), path,
             "this is not a vision projector" + (arch ? " but a '" + *arch + "' text model" : std::string()),
             "Pass the language model as the text model and its mmproj-*.gguf file as the projector");
    }
    check_key_types(f);
    const auto has_vision = f.get_bool("clip.has_vision_encoder");
    if (!has_vision || !*has_vision) {
        fail(f.role(), path,
             std::string("the projector has no vision encoder (clip.has_vision_encoder is ") +
                 (has_vision ? "false" : "missing") + ")",
             "ecso-edge needs an image projector; audio-only projectors are not supported");
    }
    ProjectorInfo info;
    info.path = path;
    // clip.cpp's order: clip.projector_type, then (when empty) clip.vision.projector_type. Checking
    // another type than the one clip.cpp builds would let an unchecked layout through.
    auto type = f.get_string("clip.projector_type");
    if (!type || type->empty()) {
        type = f.get_string("clip.vision.projector_type");
    }
    if (!type || type->empty()) {
        fail(f.role(), path, "the projector type is not set (clip.projector_type is missing or empty)",
             "Re-convert the projector with a current llama.cpp (LLaVA-1.5 projectors use 'mlp')");
    }
    info.projector_type = *type;
    const std::string & t = info.projector_type;
    if (t == "mlp" || t == "mlp_norm" || t == "ldp" || t == "ldpv2") {
        // These run clip.cpp's llava graph, which dereferences every tower tensor unchecked.
        check_vision_tower(f, info);
    } else {
        // Other families have their own tensor layouts; mtmd gets them after the key checks.
        const std::string v = "clip.vision.";
        info.image_size = f.require_int(v + "image_size", 1, 8192);
        info.patch_size = f.require_int(v + "patch_size", 1, 1024);
        info.vision_n_embd = f.require_int(v + "embedding_length", 1, 1 << 16);
        info.n_blocks = f.require_int(v + "block_count", 1, 1024);
    }
    if (t == "mlp" || t == "mlp_norm") {
        check_llava_mlp(f, info);
        check_grid_pinpoints(f, info);
    }
    if (!info.fully_validated && !trust_unchecked_projectors()) {
        // Found by the fuzz suite: mtmd's graph builders for other types (qwen2vl_merger, ...)
        // GGML_ASSERT on tensors their loaders treat as optional, aborting the whole process.
        fail(f.role(), path,
             "projector type '" + t + "' is not one ecso-edge validates tensor by tensor (mlp, mlp_norm), and mtmd "
                 "aborts the process on some damaged files of other types",
             "Use a LLaVA-style projector, or set the environment variable ECSO_TRUST_PROJECTOR=1 to hand a file "
             "you trust to mtmd unchecked");
    }
    if (info.output_n_embd != 0 && info.output_n_embd != text.n_embd) {
        fail(f.role(), path,
             "its output size " + std::to_string(info.output_n_embd) + " does not match the text model's embedding size " +
                 std::to_string(text.n_embd) + " ('" + text.path + "')",
             "Use the mmproj file made for this text model");
    }
    return info;
}

}  // namespace ecso
