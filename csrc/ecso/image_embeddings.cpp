// NaN and infinity in image embeddings: found, repaired where the cause is known, else refused
// (see image_embeddings.hpp).
#include "ecso/image_embeddings.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ecso/errors.hpp"

namespace ecso {
namespace {

bool row_is_finite(const float * row, size_t n) {
    return std::all_of(row, row + n, [](float v) { return std::isfinite(v); });
}

bool row_equals(const float * row, const std::vector<float> & b) {
    return std::memcmp(row, b.data(), b.size() * sizeof(float)) == 0;
}

// The break rows of a layout with `stride` = p_x + 1 tokens a row: p_x patches, then the break.
bool layout_explains(const std::vector<float> & embd, size_t n_tokens, size_t stride, const std::vector<bool> & bad,
                     const std::vector<float> & break_row) {
    const size_t n_embd = break_row.size();
    for (size_t r = 0; r < n_tokens; ++r) {
        const bool is_break = (r + 1) % stride == 0;
        if (bad[r] && !is_break) {
            return false;
        }
        if (is_break && !bad[r] && !row_equals(&embd[r * n_embd], break_row)) {
            return false;
        }
    }
    return true;
}

}  // namespace

EmbeddingRepair check_image_embeddings(std::vector<float> & embd, size_t n_tokens, size_t n_embd,
                                       const std::vector<float> & break_row, const std::string & projector) {
    std::vector<bool> bad(n_tokens, false);
    size_t n_bad = 0;
    for (size_t r = 0; r < n_tokens; ++r) {
        bad[r] = !row_is_finite(&embd[r * n_embd], n_embd);
        n_bad += bad[r] ? 1 : 0;
    }
    EmbeddingRepair repair;
    if (n_bad == 0) {
        return repair;
    }
    // n_tokens = (p_x + 1) * p_y - 1: every stride dividing n_tokens + 1 with two rows or more.
    std::vector<size_t> layouts;
    if (break_row.size() == n_embd) {
        for (size_t stride = 2; stride <= (n_tokens + 1) / 2; ++stride) {
            if ((n_tokens + 1) % stride == 0 && layout_explains(embd, n_tokens, stride, bad, break_row)) {
                layouts.push_back(stride);
            }
        }
    }
    if (layouts.size() != 1) {
        throw ImageError("the vision projector " + projector + " returned NaN or infinity in " + std::to_string(n_bad) +
                         " of the image's " + std::to_string(n_tokens) +
                         " embedding rows, so no answer could be computed from them. Check that the mmproj file "
                         "matches the text model and is not damaged (re-download or re-convert it)");
    }
    for (size_t r = 0; r < n_tokens; ++r) {
        if (bad[r]) {
            std::copy(break_row.begin(), break_row.end(), embd.begin() + static_cast<std::ptrdiff_t>(r * n_embd));
            ++repair.rows_repaired;
        }
    }
    return repair;
}

}  // namespace ecso
