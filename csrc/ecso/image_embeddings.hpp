// The check every image encoding passes before it reaches the KV cache: no NaN or infinity, with
// the one known cause repaired in place.
//
// Pixtral's graph in the pinned llama.cpp (tools/mtmd/models/pixtral.cpp) builds its [IMG_BREAK]
// rows from a tensor it never initialises, "cleared" with ggml_scale(x, 0.0) before the break
// embedding is added. 0 x NaN and 0 x infinity are NaN, so when the compute buffer's memory last
// held such a bit pattern (recycled heap memory, in a long-running process), every break row is
// NaN, the answer is argmax over NaN logits (token 0 again and again) and nothing reports it. The
// rows are meant to hold exactly the break embedding, and a finite row does (0 x finite + b = b).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace ecso {

struct EmbeddingRepair {
    size_t rows_repaired = 0;  // break rows that held NaN or infinity and now hold the break embedding
};

// Checks `embd` (`n_tokens` rows of `n_embd` floats, as mtmd_get_output_embd returns them). When a
// row holds NaN or infinity: if `break_row` is Pixtral's break embedding and the bad rows are all
// break rows of one row layout (every (p_x + 1)-th row but the last, each either bad or equal to
// the break embedding), those rows are overwritten with it; otherwise throws ImageError naming
// `projector` (its path and type), since an answer computed from them would be meaningless.
EmbeddingRepair check_image_embeddings(std::vector<float> & embd, size_t n_tokens, size_t n_embd,
                                       const std::vector<float> & break_row, const std::string & projector);

}  // namespace ecso
