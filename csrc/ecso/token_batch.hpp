// RAII owner of a llama_batch of text tokens for llama_decode. Each token belongs to one sequence,
// and one batch may hold tokens of several sequences (shadow judging feeds the judge's sequence
// beside step 1's): the batch's sequence slots are sized for that. A parallel session's lane adds
// its first sequence id to each token's (its sequences are [seq_base, seq_base + 4)).
#pragma once

#include <string>

#include "ecso/errors.hpp"
#include "llama.h"

namespace ecso {

class TokenBatch {
public:
    explicit TokenBatch(int32_t capacity, llama_seq_id seq_base = 0)
        : batch_(llama_batch_init(capacity, 0, 1)), capacity_(capacity), seq_base_(seq_base) {}
    ~TokenBatch() { llama_batch_free(batch_); }
    TokenBatch(const TokenBatch &) = delete;
    TokenBatch & operator=(const TokenBatch &) = delete;

    void clear() { batch_.n_tokens = 0; }
    bool full() const { return batch_.n_tokens >= capacity_; }
    int32_t size() const { return batch_.n_tokens; }
    int32_t capacity() const { return capacity_; }

    // Throws RuntimeFailure when the batch is full: callers check full() first, and writing past
    // llama_batch_init's arrays would corrupt the heap.
    void add(llama_token token, llama_pos pos, llama_seq_id seq, bool logits) {
        if (full()) {
            throw RuntimeFailure("internal: a decode batch of " + std::to_string(capacity_) +
                                 " tokens would overflow");
        }
        const int32_t i = batch_.n_tokens++;
        batch_.token[i] = token;
        batch_.pos[i] = pos;
        batch_.n_seq_id[i] = 1;
        batch_.seq_id[i][0] = seq_base_ + seq;
        batch_.logits[i] = logits ? 1 : 0;
    }

    const llama_batch & get() const { return batch_; }

private:
    llama_batch batch_;
    int32_t capacity_;
    llama_seq_id seq_base_;
};

}  // namespace ecso
