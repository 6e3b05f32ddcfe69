// Checks a sequence's KV state, as llama_state_seq_get_data writes it, before its bytes go back to
// llama_state_seq_set_data: a state file is data from disk, and llama.cpp's reader trusts the
// positions, cell counts and layer headers it finds (a wrong one can reach a GGML_ASSERT).
//
// How: the context writes a state of one cell of its own (`reference`); a state from disk must
// have exactly that layout (the same memory modules, streams, layers, types and row sizes), cells
// whose metadata is in range, and the length that layout gives for its cell count. Only the K/V
// values themselves are taken as they are. The layout is the pinned llama.cpp's (llama_context::
// state_seq_get_data: a magic and the sequence id, then llama_kv_cache::state_write_meta/
// state_write_data, one module per KV cache, base then window for iSWA); a model
// whose reference does not parse that way gets no state file at all.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ecso {

struct KvLayerLayout {
    int32_t k_type = 0;
    uint64_t k_row = 0;
    int32_t v_type = 0;
    uint64_t v_row = 0;      // bytes of one cell's V row (v_trans: element size x n_embd_v)
    uint32_t v_el = 0;       // v_trans only
    uint32_t v_embd = 0;     // v_trans only
    bool operator==(const KvLayerLayout & o) const {
        return k_type == o.k_type && k_row == o.k_row && v_type == o.v_type && v_row == o.v_row &&
               v_el == o.v_el && v_embd == o.v_embd;
    }
};

struct KvModuleLayout {
    uint32_t n_stream = 0;
    uint32_t v_trans = 0;
    std::vector<KvLayerLayout> layers;
    bool operator==(const KvModuleLayout & o) const {
        return n_stream == o.n_stream && v_trans == o.v_trans && layers == o.layers;
    }
};

struct KvStateLayout {
    uint32_t magic = 0;      // llama_context's state magic, written before the sequence id
    uint32_t ext_bytes = 0;  // per-cell extension (M-RoPE's 2D position and token), 0 or 12
    std::vector<KvModuleLayout> modules;
};

struct KvCheckLimits {
    uint32_t max_cells = 0;    // the cells the sequence may hold
    int32_t max_pos = 0;       // positions are in [0, max_pos)
    int32_t n_vocab = 0;       // an extension's token is -1 or a vocabulary id
    // Each cell at a position of its own: a sequence whose every item takes one position per
    // cell (no M-RoPE image), so that cells == max_pos makes them exactly 0 .. max_pos - 1, the
    // positions its token map says; a forged layout would otherwise load and fail every turn.
    bool distinct_positions = false;
};

// The layout of the context's own one-cell state. Throws ConfigError when it is not the pinned
// format (the model's KV state cannot be checked, so it is not saved).
KvStateLayout learn_kv_layout(const std::vector<uint8_t> & reference, bool has_ext, int32_t n_layer);

// "" when `state` has `reference`'s layout with `cells` cells in its first module (at most that
// many in the others: a window cache keeps fewer) and in-range metadata; else what is wrong.
std::string check_kv_state(const std::vector<uint8_t> & state, const KvStateLayout & reference, uint32_t cells,
                           const KvCheckLimits & limits);

}  // namespace ecso
