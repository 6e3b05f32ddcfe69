// The saved answer sequences that every slot and every session on one Model can continue from.
// Each conversation cache (conversation_cache.hpp) owns its entries and keeps them within its own
// bounds; it publishes them here, so a conversation that comes back on another slot of a parallel
// session, or in another Session on the same Model, restores its cells instead of prefilling its
// history again. The store holds no entry alive: one leaves when its owner drops it (eviction,
// clear_cache, the owner's end), so the memory stays what the owners' bounds allow.
//
// Why another context's cells are exact here: what changes their values (the weights, n_batch,
// the layers' placement, flash attention, the kernels) is the Model's, the same for every context
// on it. Contexts on it differ only in size and sequence count, and a restore goes into an emptied
// cache, where the cells land as a fresh evaluation lays them out, as for a session's own entry
// (a parallel lane beside busy neighbours is as exact as any of its requests: docs/parallel.md).
// What a session promises about its generated cells is its own (EcsoConfig::reuse_answer_cells),
// so an entry that holds them is offered only to sessions that accept them.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "ecso/prompt.hpp"

namespace ecso {

// One saved sequence: the items its cells hold (media pointers null) and its KV state.
struct SavedSequence {
    std::vector<PromptItem> items;
    std::vector<uint8_t> state;
    size_t turn_end = 0;  // the items up to the end of its prompt's last message
};

class SequenceStore {
public:
    // `owner` tells an entry's own cache apart; `generated_cells`: its cells past the prompt were
    // decoded one token at a time (the owner reuses answer cells).
    void publish(const std::shared_ptr<const SavedSequence> & entry, const void * owner, bool generated_cells);
    // The live entries of every other owner, generated ones only when `accept_generated`.
    std::vector<std::shared_ptr<const SavedSequence>> others(const void * owner, bool accept_generated) const;

private:
    struct Published {
        std::weak_ptr<const SavedSequence> entry;
        const void * owner;
        bool generated_cells;
    };
    mutable std::mutex mutex_;
    std::vector<Published> published_;  // expired ones are dropped by the next publish
};

}  // namespace ecso
