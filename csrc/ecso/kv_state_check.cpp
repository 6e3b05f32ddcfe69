// Parses llama.cpp's sequence state (the pinned format; see kv_state_check.hpp) without trusting
// any of it: every count and size is bounded before it is used.
#include "ecso/kv_state_check.hpp"

#include "ecso/bounded_reader.hpp"
#include "ecso/errors.hpp"

namespace ecso {
namespace {

constexpr uint32_t kMaxStreams = 256;
constexpr uint32_t kMaxLayers = 4096;
constexpr uint64_t kMaxRowBytes = uint64_t{1} << 26;
constexpr int32_t kMaxGgmlType = 255;

// Running out inside a module is its own damage, worded as the KV check words it.
BoundedReader kv_reader(const std::vector<uint8_t> & bytes) {
    return BoundedReader(bytes.data(), bytes.size(), "it ends inside its data");
}

struct ModuleRead {
    KvModuleLayout layout;
    bool has_layers = false;  // a module whose streams are all empty carries no layer headers
    uint32_t cells = 0;
};

// One KV cache's part of the state. `limits` null: the context's own reference.
ModuleRead read_module(BoundedReader & in, uint32_t ext_bytes, int32_t n_layer_max, const KvCheckLimits * limits) {
    ModuleRead out;
    out.layout.n_stream = in.read<uint32_t>();
    if (out.layout.n_stream == 0 || out.layout.n_stream > kMaxStreams) {
        throw MalformedBytes("its stream count " + std::to_string(out.layout.n_stream) + " is out of range");
    }
    for (uint32_t s = 0; s < out.layout.n_stream; ++s) {
        const uint32_t cells = in.read<uint32_t>();
        if (cells == 0) {
            continue;
        }
        if (limits != nullptr && (cells > limits->max_cells || out.cells > limits->max_cells - cells)) {
            throw MalformedBytes("it holds " + std::to_string(cells) + " cells, more than this context's " +
                      std::to_string(limits->max_cells));
        }
        out.cells += cells;
        std::vector<bool> taken(limits != nullptr && limits->distinct_positions ? limits->max_pos : 0);
        for (uint32_t i = 0; i < cells; ++i) {
            const int32_t pos = in.read<int32_t>();
            const uint32_t n_seq_id = in.read<uint32_t>();
            if (n_seq_id != 1) {
                throw MalformedBytes("a cell belongs to " + std::to_string(n_seq_id) + " sequences, not 1");
            }
            if (ext_bytes != 0) {
                const int32_t x = in.read<int32_t>();
                const int32_t y = in.read<int32_t>();
                const int32_t tok = in.read<int32_t>();
                if (limits != nullptr &&
                    (x < 0 || y < 0 || x >= limits->max_pos || y >= limits->max_pos || tok < -1 ||
                     tok >= limits->n_vocab)) {
                    throw MalformedBytes("a cell's 2D position or token is out of range");
                }
            }
            in.read<int32_t>();  // the sequence id it was saved from: llama.cpp uses the destination's
            // (cells come in cell order, which a context shared by lanes need not keep in position order)
            if (limits != nullptr && (pos < 0 || pos >= limits->max_pos)) {
                throw MalformedBytes("a cell's position " + std::to_string(pos) + " is out of range");
            }
            if (!taken.empty()) {
                if (taken[static_cast<size_t>(pos)]) {
                    throw MalformedBytes("two cells are at position " + std::to_string(pos));
                }
                taken[static_cast<size_t>(pos)] = true;
            }
        }
        KvModuleLayout layout;
        layout.n_stream = out.layout.n_stream;
        layout.v_trans = in.read<uint32_t>();
        const uint32_t n_layer = in.read<uint32_t>();
        if (layout.v_trans > 1 || n_layer == 0 || n_layer > kMaxLayers ||
            static_cast<int64_t>(n_layer) > n_layer_max) {
            throw MalformedBytes("its layer header is out of range");
        }
        layout.layers.resize(n_layer);
        for (auto & layer : layout.layers) {
            layer.k_type = in.read<int32_t>();
            layer.k_row = in.read<uint64_t>();
            if (layer.k_type < 0 || layer.k_type > kMaxGgmlType || layer.k_row == 0 || layer.k_row > kMaxRowBytes) {
                throw MalformedBytes("a K layer header is out of range");
            }
            in.skip(layer.k_row * cells);
        }
        for (auto & layer : layout.layers) {
            layer.v_type = in.read<int32_t>();
            if (layout.v_trans == 0) {
                layer.v_row = in.read<uint64_t>();
            } else {
                layer.v_el = in.read<uint32_t>();
                layer.v_embd = in.read<uint32_t>();
                layer.v_row = uint64_t{layer.v_el} * layer.v_embd;
            }
            if (layer.v_type < 0 || layer.v_type > kMaxGgmlType || layer.v_row == 0 || layer.v_row > kMaxRowBytes) {
                throw MalformedBytes("a V layer header is out of range");
            }
            in.skip(layer.v_row * cells);
        }
        if (out.has_layers && !(layout == out.layout)) {
            throw MalformedBytes("its streams disagree on the layer layout");
        }
        out.layout = layout;
        out.has_layers = true;
    }
    return out;
}

}  // namespace

KvStateLayout learn_kv_layout(const std::vector<uint8_t> & reference, bool has_ext, int32_t n_layer) {
    KvStateLayout out;
    out.ext_bytes = has_ext ? 12 : 0;  // llama_kv_cell_ext: x, y, tok
    try {
        BoundedReader in = kv_reader(reference);
        out.magic = in.read<uint32_t>();
        in.read<int32_t>();  // the sequence id
        while (!in.done()) {
            ModuleRead m = read_module(in, out.ext_bytes, n_layer, nullptr);
            if (!m.has_layers || m.cells != 1) {
                throw MalformedBytes("a module does not hold the one cell written");
            }
            out.modules.push_back(std::move(m.layout));
        }
        if (out.modules.empty() || out.modules.size() > 2) {
            throw MalformedBytes("it has " + std::to_string(out.modules.size()) + " memory modules");
        }
    } catch (const MalformedBytes & e) {
        throw ConfigError(std::string("this model's KV state is not in the layout ecso-edge can check (") + e.what() +
                          "), so conversations cannot be saved to or loaded from a state file");
    }
    return out;
}

std::string check_kv_state(const std::vector<uint8_t> & state, const KvStateLayout & reference, uint32_t cells,
                           const KvCheckLimits & limits) {
    try {
        BoundedReader in = kv_reader(state);
        const int32_t seq = (in.read<uint32_t>() == reference.magic) ? in.read<int32_t>() : -1;
        if (seq < 0 || seq >= static_cast<int32_t>(kMaxStreams)) {
            throw MalformedBytes("its header is not llama.cpp's");
        }
        for (size_t i = 0; i < reference.modules.size(); ++i) {
            const ModuleRead m = read_module(in, reference.ext_bytes, static_cast<int32_t>(kMaxLayers), &limits);
            if (m.layout.n_stream != reference.modules[i].n_stream) {
                throw MalformedBytes("its stream count differs from this context's");
            }
            if (i == 0 ? m.cells != cells : m.cells > cells) {
                throw MalformedBytes("it holds " + std::to_string(m.cells) + " cells where its conversation has " +
                          std::to_string(cells));
            }
            if (m.has_layers && !(m.layout == reference.modules[i])) {
                throw MalformedBytes("its layers (count, types or row sizes) differ from this context's");
            }
        }
        if (!in.done()) {
            throw MalformedBytes("it has bytes after its last module");
        }
    } catch (const MalformedBytes & e) {
        return std::string("a saved KV sequence is damaged: ") + e.what();
    }
    return "";
}

}  // namespace ecso
