// Parses llama.cpp's sequence state (the pinned format; see kv_state_check.hpp) without trusting
// any of it: every count and size is bounded before it is used.
#include "ecso/kv_state_check.hpp"

#include <cstring>
#include <stdexcept>

#include "ecso/errors.hpp"

namespace ecso {
namespace {

constexpr uint32_t kMaxStreams = 256;
constexpr uint32_t kMaxLayers = 4096;
constexpr uint64_t kMaxRowBytes = uint64_t{1} << 26;
constexpr int32_t kMaxGgmlType = 255;

struct Bad : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class Cursor {
public:
    Cursor(const std::vector<uint8_t> & bytes) : bytes_(bytes) {}
    template <typename T>
    T read() {
        T value;
        need(sizeof(T));
        std::memcpy(&value, bytes_.data() + at_, sizeof(T));
        at_ += sizeof(T);
        return value;
    }
    void skip(uint64_t n) {
        need(n);
        at_ += static_cast<size_t>(n);
    }
    bool done() const { return at_ == bytes_.size(); }

private:
    void need(uint64_t n) const {
        if (n > bytes_.size() - at_) {
            throw Bad("it ends inside its data");
        }
    }
    const std::vector<uint8_t> & bytes_;
    size_t at_ = 0;
};

struct ModuleRead {
    KvModuleLayout layout;
    bool has_layers = false;  // a module whose streams are all empty carries no layer headers
    uint32_t cells = 0;
};

// One KV cache's part of the state. `limits` null: the context's own reference.
ModuleRead read_module(Cursor & in, uint32_t ext_bytes, int32_t n_layer_max, const KvCheckLimits * limits) {
    ModuleRead out;
    out.layout.n_stream = in.read<uint32_t>();
    if (out.layout.n_stream == 0 || out.layout.n_stream > kMaxStreams) {
        throw Bad("its stream count " + std::to_string(out.layout.n_stream) + " is out of range");
    }
    for (uint32_t s = 0; s < out.layout.n_stream; ++s) {
        const uint32_t cells = in.read<uint32_t>();
        if (cells == 0) {
            continue;
        }
        if (limits != nullptr && (cells > limits->max_cells || out.cells > limits->max_cells - cells)) {
            throw Bad("it holds " + std::to_string(cells) + " cells, more than this context's " +
                      std::to_string(limits->max_cells));
        }
        out.cells += cells;
        std::vector<bool> taken(limits != nullptr && limits->distinct_positions ? limits->max_pos : 0);
        for (uint32_t i = 0; i < cells; ++i) {
            const int32_t pos = in.read<int32_t>();
            const uint32_t n_seq_id = in.read<uint32_t>();
            if (n_seq_id != 1) {
                throw Bad("a cell belongs to " + std::to_string(n_seq_id) + " sequences, not 1");
            }
            if (ext_bytes != 0) {
                const int32_t x = in.read<int32_t>();
                const int32_t y = in.read<int32_t>();
                const int32_t tok = in.read<int32_t>();
                if (limits != nullptr &&
                    (x < 0 || y < 0 || x >= limits->max_pos || y >= limits->max_pos || tok < -1 ||
                     tok >= limits->n_vocab)) {
                    throw Bad("a cell's 2D position or token is out of range");
                }
            }
            in.read<int32_t>();  // the sequence id it was saved from: llama.cpp uses the destination's
            // (cells come in cell order, which a context shared by lanes need not keep in position order)
            if (limits != nullptr && (pos < 0 || pos >= limits->max_pos)) {
                throw Bad("a cell's position " + std::to_string(pos) + " is out of range");
            }
            if (!taken.empty()) {
                if (taken[static_cast<size_t>(pos)]) {
                    throw Bad("two cells are at position " + std::to_string(pos));
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
            throw Bad("its layer header is out of range");
        }
        layout.layers.resize(n_layer);
        for (auto & layer : layout.layers) {
            layer.k_type = in.read<int32_t>();
            layer.k_row = in.read<uint64_t>();
            if (layer.k_type < 0 || layer.k_type > kMaxGgmlType || layer.k_row == 0 || layer.k_row > kMaxRowBytes) {
                throw Bad("a K layer header is out of range");
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
                throw Bad("a V layer header is out of range");
            }
            in.skip(layer.v_row * cells);
        }
        if (out.has_layers && !(layout == out.layout)) {
            throw Bad("its streams disagree on the layer layout");
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
        Cursor in(reference);
        out.magic = in.read<uint32_t>();
        in.read<int32_t>();  // the sequence id
        while (!in.done()) {
            ModuleRead m = read_module(in, out.ext_bytes, n_layer, nullptr);
            if (!m.has_layers || m.cells != 1) {
                throw Bad("a module does not hold the one cell written");
            }
            out.modules.push_back(std::move(m.layout));
        }
        if (out.modules.empty() || out.modules.size() > 2) {
            throw Bad("it has " + std::to_string(out.modules.size()) + " memory modules");
        }
    } catch (const Bad & e) {
        throw ConfigError(std::string("this model's KV state is not in the layout ecso-edge can check (") + e.what() +
                          "), so conversations cannot be saved to or loaded from a state file");
    }
    return out;
}

std::string check_kv_state(const std::vector<uint8_t> & state, const KvStateLayout & reference, uint32_t cells,
                           const KvCheckLimits & limits) {
    try {
        Cursor in(state);
        const int32_t seq = (in.read<uint32_t>() == reference.magic) ? in.read<int32_t>() : -1;
        if (seq < 0 || seq >= static_cast<int32_t>(kMaxStreams)) {
            throw Bad("its header is not llama.cpp's");
        }
        for (size_t i = 0; i < reference.modules.size(); ++i) {
            const ModuleRead m = read_module(in, reference.ext_bytes, static_cast<int32_t>(kMaxLayers), &limits);
            if (m.layout.n_stream != reference.modules[i].n_stream) {
                throw Bad("its stream count differs from this context's");
            }
            if (i == 0 ? m.cells != cells : m.cells > cells) {
                throw Bad("it holds " + std::to_string(m.cells) + " cells where its conversation has " +
                          std::to_string(cells));
            }
            if (m.has_layers && !(m.layout == reference.modules[i])) {
                throw Bad("its layers (count, types or row sizes) differ from this context's");
            }
        }
        if (!in.done()) {
            throw Bad("it has bytes after its last module");
        }
    } catch (const Bad & e) {
        return std::string("a saved KV sequence is damaged: ") + e.what();
    }
    return "";
}

}  // namespace ecso
