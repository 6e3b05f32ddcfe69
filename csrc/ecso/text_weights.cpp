// Loading and checking a text model (see text_weights.hpp).
#include "ecso/text_weights.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <unistd.h>

#include "ggml-backend.h"

#include "ecso/errors.hpp"
#include "ecso/logging.hpp"
#include "ecso/system_info.hpp"

namespace ecso {

TextWeights::TextWeights(const std::string & path, const ModelOptions & options) : options_(options) {
    ensure_backend_initialised();
    set_verbose_logging(options.verbose);
    if (options.n_ctx < 16) {
        throw ConfigError("n_ctx must be at least 16 (got " + std::to_string(options.n_ctx) + ")");
    }
    if (options.n_batch < kMinBatch) {
        // llama.cpp reserves an output row per sequence in every batch; a session holds kMinBatch
        // sequences, and a smaller batch aborts the process in llama_context's output_reserve.
        throw ConfigError("n_batch must be at least " + std::to_string(kMinBatch) + " (got " +
                          std::to_string(options.n_batch) + "): a session keeps " + std::to_string(kMinBatch) +
                          " KV sequences and llama.cpp needs a batch row for each");
    }
    if (options.n_threads < 0 || options.n_threads_batch < 0) {
        throw ConfigError("n_threads and n_threads_batch must be >= 1 (or 0 for the default)");
    }
    // More OpenMP threads than hardware threads only add barrier waits, and thousands of them
    // never finish a graph (measured: n_threads=10000 hung): clamp, as documented.
    const int32_t hardware = std::max(1, static_cast<int32_t>(std::thread::hardware_concurrency()));
    n_threads_ = options.n_threads > 0 ? std::min(options.n_threads, hardware) : std::max(1, hardware / 2);
    n_threads_batch_ = options.n_threads_batch > 0 ? std::min(options.n_threads_batch, hardware) : n_threads_;
    info_ = check_text_model(path);
}

void TextWeights::load() {
    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = options_.n_gpu_layers;
    repack_ = options_.repack.value_or(repack_by_default());
    mparams.use_extra_bufts = repack_;
    clear_log_errors();
    model_.reset(llama_model_load_from_file(info_.path.c_str(), mparams));
    if (!model_) {
        throw ModelLoadError("text model '" + info_.path + "': llama.cpp could not load it" + last_log_suffix() +
                             ". Check that the file is a complete GGUF of an architecture this llama.cpp supports");
    }
    vocab_ = llama_model_get_vocab(model_.get());
    check_context_fits();
}

namespace {

int64_t meta_int(const llama_model * model, const std::string & key, int64_t fallback) {
    char buf[64];
    if (llama_model_meta_val_str(model, key.c_str(), buf, sizeof(buf)) < 0) {
        return fallback;
    }
    char * end = nullptr;
    const long long v = std::strtoll(buf, &end, 10);
    return end != buf && v > 0 ? v : fallback;
}

std::string gib(double bytes) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.1f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
    return buf;
}

}  // namespace

// A context whose KV cache cannot be allocated fails inside llama.cpp with std::bad_alloc, and
// only when the first session creates it, as an error that does not say which option to change.
// The cache's f16 keys and values for n_ctx cells are a lower bound of what that allocation needs
// (the real cache also has padding and, with flash attention off, scratch buffers); only when that
// bound exceeds the RAM plus the offload devices' memory is the load refused, so no context that
// could fit is.
void TextWeights::check_context_fits() const {
    const llama_model * m = model_.get();
    char arch[128] = "";
    llama_model_meta_val_str(m, "general.architecture", arch, sizeof(arch));
    const int64_t n_head = std::max<int32_t>(1, llama_model_n_head(m));
    const int64_t head = std::max<int64_t>(1, llama_model_n_embd(m) / n_head);
    const int64_t key = meta_int(m, std::string(arch) + ".attention.key_length", head);
    const int64_t value = meta_int(m, std::string(arch) + ".attention.value_length", head);
    const double per_cell = 2.0 * static_cast<double>(llama_model_n_layer(m)) *
                            static_cast<double>(std::max<int32_t>(0, llama_model_n_head_kv(m))) *
                            static_cast<double>(key + value);
    const double needed = per_cell * static_cast<double>(options_.n_ctx);
    double memory = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
    if (options_.n_gpu_layers != 0) {
        for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            if (ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_CPU) {
                size_t free = 0, total = 0;
                ggml_backend_dev_memory(dev, &free, &total);
                memory += static_cast<double>(total);
            }
        }
    }
    if (memory > 0 && needed > memory) {
        throw ResourceError("n_ctx " + std::to_string(options_.n_ctx) + " needs a KV cache of at least " +
                            gib(needed) + " for text model '" + info_.path + "', more than this machine's " +
                            gib(memory) + " of memory. Lower n_ctx (the model was trained on " +
                            std::to_string(llama_model_n_ctx_train(m)) + " tokens)");
    }
}

llama_flash_attn_type TextWeights::flash_attn_type() const {
    if (!options_.flash_attn) {
        return LLAMA_FLASH_ATTN_TYPE_AUTO;
    }
    return *options_.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
}

int32_t TextWeights::n_embd() const { return llama_model_n_embd_inp(model_.get()); }

int32_t TextWeights::n_ctx_train() const { return llama_model_n_ctx_train(model_.get()); }

std::string TextWeights::own_chat_template() const {
    const char * tmpl = llama_model_chat_template(model_.get(), nullptr);
    return tmpl ? std::string(tmpl) : std::string();
}

std::vector<llama_token> TextWeights::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    const int32_t len = static_cast<int32_t>(std::min<size_t>(text.size(), INT32_MAX / 2));
    std::vector<llama_token> tokens(static_cast<size_t>(len) + 2);
    int32_t n = llama_tokenize(vocab_, text.data(), len, tokens.data(), static_cast<int32_t>(tokens.size()),
                               add_special, parse_special);
    if (n < 0) {
        tokens.resize(static_cast<size_t>(-n));
        n = llama_tokenize(vocab_, text.data(), len, tokens.data(), static_cast<int32_t>(tokens.size()), add_special,
                           parse_special);
    }
    if (n < 0) {
        throw RuntimeFailure("tokenization failed for a text of " + std::to_string(text.size()) + " bytes");
    }
    tokens.resize(static_cast<size_t>(n));
    return tokens;
}

std::string TextWeights::token_piece(llama_token token, bool special) const {
    char buf[256];
    int32_t n = llama_token_to_piece(vocab_, token, buf, sizeof(buf), 0, special);
    if (n >= 0) {
        return std::string(buf, static_cast<size_t>(n));
    }
    std::string big(static_cast<size_t>(-n), '\0');
    n = llama_token_to_piece(vocab_, token, big.data(), static_cast<int32_t>(big.size()), 0, special);
    return n >= 0 ? big.substr(0, static_cast<size_t>(n)) : std::string();
}

bool TextWeights::is_end_of_generation(llama_token token) const { return llama_vocab_is_eog(vocab_, token); }

}  // namespace ecso
