// EcsoSession's state file: what goes into it from each slot, what a file must agree with to come
// back, and the slots held still while either happens (the file's format: session_state_file.hpp).
#include <algorithm>
#include <string>
#include <vector>

#include "ecso/errors.hpp"
#include "ecso/model_impl.hpp"
#include "ecso/session_impl.hpp"
#include "ecso/session_state_file.hpp"

namespace ecso {

class EcsoSession::Impl::AllSlots {
public:
    // In slot order, so two of these never hold a slot each that the other waits for.
    explicit AllSlots(Impl & session) : session_(session) {
        std::unique_lock<std::mutex> lock(session_.slots_mutex_);
        for (auto & slot : session_.slots_) {
            session_.slot_freed_.wait(lock, [&] { return !slot->busy; });
            slot->busy = true;
        }
    }
    ~AllSlots() {
        {
            std::lock_guard<std::mutex> lock(session_.slots_mutex_);
            for (auto & slot : session_.slots_) {
                slot->busy = false;
            }
        }
        session_.slot_freed_.notify_all();
    }
    AllSlots(const AllSlots &) = delete;
    AllSlots & operator=(const AllSlots &) = delete;

private:
    Impl & session_;
};

std::string EcsoSession::Impl::state_fingerprint() const {
    // The cells' values depend on the weights, the batch split of prompt evaluation, where the
    // layers ran and with which kernels (llama.cpp's build and CPU features); their layout on the
    // KV types and flash attention, which the KV check compares on its own. answer_cells: the
    // saved answers' own cells were decoded one token at a time, which a session that keeps only
    // prefilled cells (reuse_answer_cells off) must not continue from.
    const Model::Impl & m = model_->impl();
    const ModelOptions & o = m.options();
    std::string fp;
    auto line = [&fp](const std::string & key, const std::string & value) { fp += key + "=" + value + "\n"; };
    line("format", std::to_string(kStateFileVersion));
    line("text_model", file_fingerprint(model_->text_info().path));
    line("mmproj", file_fingerprint(model_->projector_info().path));
    line("n_batch", std::to_string(o.n_batch));
    line("n_gpu_layers", std::to_string(o.n_gpu_layers));
    line("mmproj_gpu", o.mmproj_gpu ? "1" : "0");
    line("flash_attn", std::to_string(static_cast<int>(m.flash_attn_type())));
    line("repack", m.repack() ? "1" : "0");
    line("answer_cells", config_.reuse_answer_cells ? "decoded" : "prefilled");
    line("llama_cpp", llama_print_system_info());
    return fp;
}

void EcsoSession::Impl::save_state(const std::string & path) {
    if (!config_.reuse_kv) {
        throw ConfigError("save_state needs reuse_kv: the reference path keeps nothing between calls");
    }
    AllSlots held(*this);
    std::vector<SlotState> slots;
    for (auto & slot : slots_) {
        SlotState s;
        s.cache = slot->conversations.snapshot(slot->engine->embeddings());
        s.history = slot->history;
        slots.push_back(std::move(s));
    }
    write_state_file(path, state_fingerprint(), slots);
}

CacheStats EcsoSession::Impl::load_state(const std::string & path) {
    if (!config_.reuse_kv) {
        throw ConfigError("load_state needs reuse_kv: the reference path keeps nothing between calls");
    }
    AllSlots held(*this);
    DecodingEngine & first = *slots_.front()->engine;
    const llama_model * lm = model_->impl().llama();
    StateFileCheck check;
    check.fingerprint = state_fingerprint();
    {
        // the probe decodes on the context: a lane does that in the scheduler's rounds
        if (scheduler_) {
            scheduler_->join(0);
        }
        struct Leave {
            BatchScheduler * rounds;
            ~Leave() {
                if (rounds) {
                    rounds->leave(0);
                }
            }
        } leave{scheduler_.get()};
        const std::vector<uint8_t> probe = first.probe_sequence_state(DecodingEngine::kSeqTextOnly);
        const llama_rope_type rope = llama_model_rope_type(lm);
        const bool ext = rope == LLAMA_ROPE_TYPE_MROPE || rope == LLAMA_ROPE_TYPE_IMROPE || rope == LLAMA_ROPE_TYPE_VISION;
        check.layout = learn_kv_layout(probe, ext, llama_model_n_layer(lm));
    }
    check.limits.max_cells = first.n_ctx();
    check.limits.max_pos = static_cast<int32_t>(first.n_ctx());
    check.limits.n_vocab = llama_vocab_n_tokens(model_->impl().vocab());
    check.n_embd = model_->impl().n_embd();
    std::vector<SlotState> loaded = read_state_file(path, check);  // throws before anything changes

    // A file from a session with another slot count: each of its slots goes to slot i mod N, so a
    // conversation's cells and the history that routes its next turn stay together.
    std::vector<SlotState> merged(slots_.size());
    for (size_t i = 0; i < loaded.size(); ++i) {
        SlotState & into = merged[i % slots_.size()];
        SlotState & from = loaded[i];
        for (auto & entry : from.cache.saved) {
            into.cache.saved.push_back(std::move(entry));
        }
        into.cache.image_used.insert(into.cache.image_used.end(), from.cache.image_used.begin(),
                                     from.cache.image_used.end());
        into.cache.captions.insert(into.cache.captions.end(), from.cache.captions.begin(), from.cache.captions.end());
        for (auto & [id, values] : from.cache.embeddings) {
            into.cache.embeddings.emplace(id, std::move(values));
        }
        into.cache.tick = std::max(into.cache.tick, from.cache.tick);
        into.history.insert(into.history.end(), from.history.begin(), from.history.end());
    }
    for (size_t i = 0; i < slots_.size(); ++i) {
        Slot & slot = *slots_[i];
        slot.engine->kv().clear();
        slot.engine->forget_single_turn();
        slot.conversations.set_limits(config_.keep_conversations, config_.conversation_cache_mib);
        slot.conversations.replace(std::move(merged[i].cache), slot.engine->embeddings());
        slot.history = std::move(merged[i].history);
    }
    CacheStats total;
    for (auto & slot : slots_) {
        total += slot->conversations.stats(slot->engine->embeddings());
    }
    return total;
}

}  // namespace ecso
