// The Model-wide view of the saved answer sequences (see sequence_store.hpp).
#include "ecso/sequence_store.hpp"

#include <algorithm>

namespace ecso {

void SequenceStore::publish(const std::shared_ptr<const SavedSequence> & entry, const void * owner,
                            bool generated_cells) {
    std::lock_guard<std::mutex> lock(mutex_);
    published_.erase(std::remove_if(published_.begin(), published_.end(),
                                    [](const Published & p) { return p.entry.expired(); }),
                     published_.end());
    published_.push_back({entry, owner, generated_cells});
}

std::vector<std::shared_ptr<const SavedSequence>> SequenceStore::others(const void * owner,
                                                                         bool accept_generated) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::shared_ptr<const SavedSequence>> live;
    auto kept = published_.begin();
    for (const Published & p : published_) {
        std::shared_ptr<const SavedSequence> entry = p.entry.lock();
        if (!entry) {
            continue;
        }
        *kept++ = p;
        if (p.owner != owner && (accept_generated || !p.generated_cells)) {
            live.push_back(std::move(entry));
        }
    }
    published_.erase(kept, published_.end());
    return live;
}

}  // namespace ecso
