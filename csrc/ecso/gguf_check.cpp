// GGUF validation for text models and projectors (see gguf_check.hpp).
#include "ecso/gguf_check.hpp"

#include <algorithm>

#include "ecso/gguf_file.hpp"
#include "ecso/llava_projector_check.hpp"

namespace ecso {
namespace {

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

bool looks_like_projector(const GgufFile & f) {
    const auto arch = f.get_string("general.architecture");
    return (arch && *arch == "clip") || f.has_key("clip.has_vision_encoder") || f.has_key("clip.projector_type");
}

// Sliding-window attention (Gemma 3, ...): llama.cpp sizes a cache from the window and asserts
// that some layer uses it (found by the fuzz suite: a window of 2^31 is a bad_alloc, a layer
// pattern of 1 leaves no windowed layer and aborts the process when a context is created).
void check_sliding_window(const GgufFile & f, const std::string & arch) {
    const std::string window_key = arch + ".attention.sliding_window";
    const auto window = f.get_int(window_key);
    if (!window || *window == 0) {
        return;
    }
    const int64_t n_ctx_train = f.get_int(arch + ".context_length").value_or(1 << 20);
    if (*window < 0 || *window > std::max<int64_t>(n_ctx_train, 1)) {
        fail(f.role(), f.path(),
             "metadata key '" + window_key + "' has the implausible value " + std::to_string(*window) +
                 " (the model's context is " + std::to_string(n_ctx_train) + ")",
             "The file is malformed");
    }
    const std::string pattern_key = arch + ".attention.sliding_window_pattern";
    if (f.has_key(pattern_key) && !f.is_array(pattern_key)) {
        const auto pattern = f.get_int(pattern_key);
        if (pattern && *pattern == 1) {
            fail(f.role(), f.path(),
                 "metadata key '" + pattern_key + "' is 1, which leaves no layer with the sliding window that '" +
                     window_key + "' sets",
                 "The file is malformed");
        }
    }
}

// M-RoPE (Qwen-VL): the rotary pairs of a head are split into sections (temporal, height, width,
// extra), and ggml's rope kernel asserts that they fit the rotated dimensions and divides by their
// sum (found by the Qwen2.5-VL sweep: a first section of 16 with 16 rotated dimensions aborts the
// first decode).
void check_rope_sections(const GgufFile & f, const std::string & arch) {
    const std::string key = arch + ".rope.dimension_sections";
    const auto sections = f.get_int32_array(key);
    if (!sections) {
        return;
    }
    const int64_t n_head = std::max<int64_t>(f.get_int(arch + ".attention.head_count").value_or(1), 1);
    const int64_t head_dim = f.get_int(arch + ".attention.key_length")
                                 .value_or(f.get_int(arch + ".embedding_length").value_or(0) / n_head);
    const int64_t n_rot = f.get_int(arch + ".rope.dimension_count").value_or(head_dim);
    int64_t sum = 0;
    bool negative = false;
    for (int64_t v : *sections) {
        negative = negative || v < 0;
        sum += v;
    }
    if (sections->size() < 4 || negative || sum <= 0 || sum > n_rot) {
        fail(f.role(), f.path(),
             "metadata key '" + key + "' must be 4 or more sections of 0 or more rotary pairs whose sum is between 1 "
                 "and the " + std::to_string(n_rot) + " rotated dimensions of a head (the sum is " +
                 std::to_string(sum) + ")",
             "The file is malformed");
    }
}

// Qwen2.5-VL's windowed blocks group merged 2x2 patches into windows of 112 px (clip.cpp's fixed
// size): a patch over 56 px makes windows of 0 tokens, and mtmd loops forever over them (found by
// the Qwen2.5-VL sweep).
void check_window_attention(const GgufFile & f, const ProjectorInfo & info) {
    const auto pattern = f.get_int("clip.vision.n_wa_pattern");
    constexpr int64_t kWindowPixels = 112;
    if (pattern && *pattern > 0 && info.patch_size * 2 > kWindowPixels) {
        fail(f.role(), f.path(),
             "patch_size " + std::to_string(info.patch_size) + " leaves no 2x2 group of patches in the " +
                 std::to_string(kWindowPixels) + " px attention windows that clip.vision.n_wa_pattern turns on (at "
                 "most " + std::to_string(kWindowPixels / 2) + " px fit)",
             "The file is malformed");
    }
}

// Towers with rotary 2-D positions (Pixtral, Qwen-VL) rotate pairs of each head's dimensions: a
// head of one dimension has none, and ggml's rope never finished (found by the Pixtral sweep:
// 32 heads of a 32-wide tower).
void check_rotary_heads(const GgufFile & f, const ProjectorInfo & info) {
    const int64_t n_head = f.require_int("clip.vision.attention.head_count", 1, 1 << 16);
    if (info.vision_n_embd % n_head != 0 || (info.vision_n_embd / n_head) % 2 != 0) {
        fail(f.role(), f.path(),
             "clip.vision.attention.head_count " + std::to_string(n_head) + " does not split the " +
                 std::to_string(info.vision_n_embd) + "-wide vision tower into heads of an even size, which its "
                 "rotary positions need",
             "The file is malformed");
    }
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
    const int64_t n_layer = f.require_int(*arch + ".block_count", 1, 512);
    // Qwen3-VL's first n layers each add a slice of an image token's (1 + n) * n_embd wide input;
    // llama.cpp multiplies without a bound, and 2^31 - 1 overflowed into an abort (Qwen3-VL sweep)
    if (f.has_key(*arch + ".n_deepstack_layers")) {
        f.require_int(*arch + ".n_deepstack_layers", 0, n_layer);
    }
    if (!f.has_key("tokenizer.ggml.tokens")) {
        fail(f.role(), path, "the file has no tokenizer vocabulary (tokenizer.ggml.tokens)",
             "ecso-edge needs a full text model with its tokenizer, not a vocabulary-less export");
    }
    f.require_array("tokenizer.ggml.tokens", GGUF_TYPE_STRING, 1);
    f.require_unique_strings("tokenizer.ggml.tokens");
    f.require_one_d_tensors_f32();
    // found by the fuzz suite: a NaN or negative epsilon aborts the first decode
    for (const char * key : {".attention.layer_norm_rms_epsilon", ".attention.layer_norm_epsilon"}) {
        f.check_epsilon(*arch + key);
    }
    check_sliding_window(f, *arch);
    check_rope_sections(f, *arch);
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
        // Every real projector's tile is at most 64 patches a side (Gemma 3: 896 / 14); attention
        // over 1,024 a side never finishes (found by the sweep: image_size 4096 with 4 px patches).
        constexpr int64_t kMaxPatchesPerSide = 128;
        if (info.image_size / info.patch_size > kMaxPatchesPerSide) {
            fail(f.role(), path,
                 "image_size " + std::to_string(info.image_size) + " with patch_size " + std::to_string(info.patch_size) +
                     " makes " + std::to_string(info.image_size / info.patch_size) + " patches a side (at most " +
                     std::to_string(kMaxPatchesPerSide) + " are plausible)",
                 "The file is malformed");
        }
    }
    if (t == "qwen2.5vl_merger") {
        check_window_attention(f, info);
    }
    if (t == "pixtral" || t == "qwen2vl_merger" || t == "qwen2.5vl_merger" || t == "qwen3vl_merger") {
        check_rotary_heads(f, info);
    }
    if ((t == "pixtral" || t == "lightonocr") && f.has_tensor("v.token_embd.img_break")) {
        info.image_break_row = f.read_tensor_f32("v.token_embd.img_break");
    }
    if (t == "mlp" || t == "mlp_norm") {
        check_llava_mlp(f, info);
        check_grid_pinpoints(f, info);
    }
    f.check_epsilon("clip.vision.attention.layer_norm_epsilon");
    if (!info.fully_validated) {
        // mtmd's graph builders for other types dereference tensors their loaders treat as optional
        // and GGML_ASSERT on shapes (found by the fuzz suite), and ggml's CPU ops abort on a 1-D
        // operand that is not f32; the child-process check (projector_probe.cpp) catches the first,
        // this the second, whose abort would come only at the first encode.
        f.require_one_d_tensors_f32();
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
