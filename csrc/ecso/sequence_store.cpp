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
    for (const Published & p : published_) {
        if (p.owner == owner || (p.generated_cells && !accept_generated)) {
            continue;
        }
        if (std::shared_ptr<const SavedSequence> entry = p.entry.lock()) {
            live.push_back(std::move(entry));
        }
    }
    return live;
}

}  // namespace ecso
