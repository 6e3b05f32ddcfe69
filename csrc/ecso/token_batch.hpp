// RAII owner of a llama_batch used to feed text tokens of one sequence to llama_decode.
#pragma once

#include "llama.h"

namespace ecso {

class TokenBatch {
public:
    explicit TokenBatch(int32_t capacity) : batch_(llama_batch_init(capacity, 0, 1)), capacity_(capacity) {}
    ~TokenBatch() { llama_batch_free(batch_); }
    TokenBatch(const TokenBatch &) = delete;
    TokenBatch & operator=(const TokenBatch &) = delete;

    void clear() { batch_.n_tokens = 0; }
    bool full() const { return batch_.n_tokens >= capacity_; }
    int32_t size() const { return batch_.n_tokens; }

    void add(llama_token token, llama_pos pos, llama_seq_id seq, bool logits) {
        const int32_t i = batch_.n_tokens++;
        batch_.token[i] = token;
        batch_.pos[i] = pos;
        batch_.n_seq_id[i] = 1;
        batch_.seq_id[i][0] = seq;
        batch_.logits[i] = logits ? 1 : 0;
    }

    const llama_batch & get() const { return batch_; }

private:
    llama_batch batch_;
    int32_t capacity_;
};

}  // namespace ecso
