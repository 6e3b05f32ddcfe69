// GgufFile: an opened GGUF file whose typed accessors never abort. gguf_get_val_* aborts the
// process on a type mismatch, so every read here checks the stored type first, and a problem
// becomes a ModelLoadError naming the file's role, its path, the problem and the fix.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>
#include <sys/stat.h>

#include "ecso/errors.hpp"
#include "ecso/logging.hpp"
#include "gguf.h"

namespace ecso {

struct GgufDeleter {
    void operator()(gguf_context * ctx) const { gguf_free(ctx); }
};
using GgufPtr = std::unique_ptr<gguf_context, GgufDeleter>;

[[noreturn]] inline void fail(const std::string & role, const std::string & path, const std::string & problem,
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

    bool is_array(const std::string & key) const {
        const int64_t id = gguf_find_key(ctx_.get(), key.c_str());
        return id >= 0 && gguf_get_kv_type(ctx_.get(), id) == GGUF_TYPE_ARRAY;
    }

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

    // A norm epsilon, when the key is present: ggml_norm and ggml_rms_norm GGML_ASSERT eps >= 0
    // when they compute (a NaN fails it too), so a bad one aborts the first decode or encode.
    void check_epsilon(const std::string & key) const {
        if (!has_key(key)) {
            return;
        }
        const double eps = require_float(key);
        if (!std::isfinite(eps) || eps < 0.0 || eps > 1.0) {
            fail(role_, path_, "metadata key '" + key + "' has the implausible value " + std::to_string(eps),
                 "The file is malformed");
        }
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

    // A tensor's values as floats, read from the file (the context holds no tensor data). Any
    // type ggml can convert to f32; throws if the tensor is absent.
    std::vector<float> read_tensor_f32(const std::string & name) const {
        const auto ne = require_tensor(name);
        const int64_t id = gguf_find_tensor(ctx_.get(), name.c_str());
        const ggml_type type = gguf_get_tensor_type(ctx_.get(), id);
        const int64_t n = ne[0] * ne[1] * ne[2] * ne[3];
        const ggml_type_traits * traits = ggml_get_type_traits(type);
        if (type != GGML_TYPE_F32 && (traits == nullptr || traits->to_float == nullptr)) {
            fail(role_, path_, "tensor '" + name + "' has the type " + ggml_type_name(type) + ", which has no f32 form",
                 "The file is malformed");
        }
        std::vector<char> raw(gguf_get_tensor_size(ctx_.get(), id));
        std::ifstream in(path_, std::ios::binary);
        in.seekg(static_cast<std::streamoff>(gguf_get_data_offset(ctx_.get()) + gguf_get_tensor_offset(ctx_.get(), id)));
        in.read(raw.data(), static_cast<std::streamsize>(raw.size()));
        if (!in) {
            fail(role_, path_, "tensor '" + name + "' could not be read", "Check that the file is complete and readable");
        }
        std::vector<float> out(static_cast<size_t>(n));
        if (type == GGML_TYPE_F32) {
            std::memcpy(out.data(), raw.data(), out.size() * sizeof(float));
        } else {
            traits->to_float(raw.data(), out.data(), n);
        }
        return out;
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

}  // namespace ecso
