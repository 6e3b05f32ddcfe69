// Writes and checks session state files (see session_state_file.hpp).
#include "ecso/session_state_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "ecso/bounded_reader.hpp"
#include "ecso/errors.hpp"
#include "ecso/fnv_hash.hpp"
#include "ecso/utf8.hpp"

namespace ecso {
namespace {

constexpr char kMagic[8] = {'E', 'C', 'S', 'O', 'S', 'T', 'A', 'T'};
constexpr uint32_t kMaxSlots = 1024;
constexpr uint32_t kMaxString = 64u << 20;   // a caption, a query, a fingerprint
constexpr uint32_t kMaxHistory = 64;
constexpr uint32_t kMaxMessages = 1u << 20;
constexpr uint64_t kFingerprintWindow = 8u << 20;

class Writer {
public:
    template <typename T>
    void put(T value) {
        const auto * p = reinterpret_cast<const uint8_t *>(&value);
        out.insert(out.end(), p, p + sizeof(T));
    }
    void bytes(const void * data, size_t n) {
        const auto * p = static_cast<const uint8_t *>(data);
        out.insert(out.end(), p, p + n);
    }
    void str(const std::string & s) {
        put<uint32_t>(static_cast<uint32_t>(s.size()));
        bytes(s.data(), s.size());
    }
    std::vector<uint8_t> out;
};

// The file's own reads on top of the bounded ones: length-prefixed text, byte runs, and counts
// that cannot promise more elements than the bytes left could hold.
class Reader : public BoundedReader {
public:
    Reader(const uint8_t * data, size_t size) : BoundedReader(data, size, "it ends inside its data (truncated?)") {}
    template <typename T>
    T get() {
        return read<T>();
    }
    std::string str(uint32_t max = kMaxString) {
        const uint32_t n = get<uint32_t>();
        if (n > max) {
            throw MalformedBytes("a text field is " + std::to_string(n) + " bytes long");
        }
        return std::string(reinterpret_cast<const char *>(take(n)), n);
    }
    std::vector<uint8_t> blob(uint64_t n) {
        const uint8_t * p = take(n);
        return std::vector<uint8_t>(p, p + n);
    }
    // A count of elements of at least `min_bytes` each: more than the bytes left is damage.
    uint32_t count(uint64_t min_bytes, uint32_t max) {
        const uint32_t n = get<uint32_t>();
        if (n > max || n * min_bytes > left()) {
            throw MalformedBytes("a count (" + std::to_string(n) + ") exceeds what the file holds");
        }
        return n;
    }
};

bool is_media_id(const std::string & id) {
    // image_content_id's "img-" and 16 hex digits, then "#" and the chunk's ordinal
    if (id.size() < 20 || id.size() > 40 || id.compare(0, 4, "img-") != 0) {
        return false;
    }
    for (size_t i = 4; i < id.size(); ++i) {
        const char c = id[i];
        const bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
        if (!(hex || (c == '#' && i == 20))) {
            return false;
        }
    }
    return true;
}

bool is_image_id(const std::string & id) { return is_media_id(id) && id.size() == 20; }

void write_slot(Writer & w, const SlotState & slot) {
    const auto & c = slot.cache;
    w.put<uint32_t>(static_cast<uint32_t>(c.saved.size()));
    for (const auto & entry : c.saved) {
        w.put<uint64_t>(entry.turn_end);
        w.put<uint64_t>(entry.used);
        w.put<uint32_t>(static_cast<uint32_t>(entry.items.size()));
        for (const PromptItem & item : entry.items) {
            w.put<int32_t>(item.token);
            w.put<int32_t>(item.n_pos);
            w.put<int32_t>(item.n_cells);
            w.str(item.media_id);
        }
        w.put<uint64_t>(entry.state.size());
        w.bytes(entry.state.data(), entry.state.size());
    }
    w.put<uint32_t>(static_cast<uint32_t>(c.image_used.size()));
    for (const auto & [id, tick] : c.image_used) {
        w.str(id);
        w.put<uint64_t>(tick);
    }
    w.put<uint32_t>(static_cast<uint32_t>(c.captions.size()));
    for (const auto & [key, caption] : c.captions) {
        w.str(key.first);
        w.str(key.second);
        w.str(caption);
    }
    w.put<uint32_t>(static_cast<uint32_t>(c.embeddings.size()));
    for (const auto & [id, values] : c.embeddings) {
        w.str(id);
        w.put<uint64_t>(values.size());
        w.bytes(values.data(), values.size() * sizeof(float));
    }
    w.put<uint64_t>(c.tick);
    w.put<uint32_t>(static_cast<uint32_t>(slot.history.size()));
    for (const auto & prints : slot.history) {
        w.put<uint32_t>(static_cast<uint32_t>(prints.size()));
        for (uint64_t p : prints) {
            w.put<uint64_t>(p);
        }
    }
}

ConversationCache::Saved read_entry(Reader & r, const StateFileCheck & check) {
    ConversationCache::Saved entry;
    entry.turn_end = r.get<uint64_t>();
    entry.used = r.get<uint64_t>();
    const uint32_t n_items = r.count(16, check.limits.max_cells);
    uint64_t cells = 0;
    uint64_t positions = 0;
    for (uint32_t i = 0; i < n_items; ++i) {
        PromptItem item;
        item.token = r.get<int32_t>();
        item.n_pos = r.get<int32_t>();
        item.n_cells = r.get<int32_t>();
        item.media_id = r.str(64);
        const bool media = item.token == -1;
        if (media ? !is_media_id(item.media_id) || item.n_pos < 1 || item.n_cells < 1
                  : item.token < 0 || item.token >= check.limits.n_vocab || !item.media_id.empty() ||
                        item.n_pos != 1 || item.n_cells != 1) {
            throw MalformedBytes("a saved prompt item is not a token of this model or an image chunk");
        }
        cells += static_cast<uint64_t>(item.n_cells);
        positions += static_cast<uint64_t>(item.n_pos);
        entry.items.push_back(std::move(item));
    }
    if (entry.items.empty() || entry.turn_end > entry.items.size() || cells > check.limits.max_cells ||
        positions > static_cast<uint64_t>(check.limits.max_pos)) {
        throw MalformedBytes("a saved sequence does not fit this context (" + std::to_string(cells) + " cells)");
    }
    const uint64_t n_state = r.get<uint64_t>();
    entry.state = r.blob(n_state);
    KvCheckLimits limits = check.limits;
    limits.max_pos = static_cast<int32_t>(positions);
    limits.distinct_positions = cells == positions;
    const std::string problem = check_kv_state(entry.state, check.layout, static_cast<uint32_t>(cells), limits);
    if (!problem.empty()) {
        throw MalformedBytes(problem);
    }
    return entry;
}

SlotState read_slot(Reader & r, const StateFileCheck & check) {
    SlotState slot;
    auto & c = slot.cache;
    const uint32_t n_saved = r.count(36, 1u << 16);
    for (uint32_t i = 0; i < n_saved; ++i) {
        c.saved.push_back(read_entry(r, check));
    }
    const uint32_t n_images = r.count(12, 1u << 20);
    for (uint32_t i = 0; i < n_images; ++i) {
        std::string id = r.str(64);
        if (!is_image_id(id)) {
            throw MalformedBytes("an image id is malformed");
        }
        c.image_used.emplace_back(std::move(id), r.get<uint64_t>());
    }
    const uint32_t n_captions = r.count(12, 1u << 20);
    for (uint32_t i = 0; i < n_captions; ++i) {
        std::string image = r.str(64);
        std::string query = r.str();
        std::string caption = r.str();
        if (!is_image_id(image)) {
            throw MalformedBytes("a caption's image id is malformed");
        }
        // both reach Python as str (r.captions) and a prompt as text: the core only ever makes UTF-8
        if (!is_valid_utf8(query) || !is_valid_utf8(caption)) {
            throw MalformedBytes("a caption or its query is not valid UTF-8");
        }
        c.captions.push_back({{std::move(image), std::move(query)}, std::move(caption)});
    }
    const uint32_t n_embd = r.count(12, 1u << 20);
    for (uint32_t i = 0; i < n_embd; ++i) {
        std::string id = r.str(64);
        const uint64_t n = r.get<uint64_t>();
        if (!is_media_id(id)) {
            throw MalformedBytes("an encoder output's image id is malformed");
        }
        if (n == 0 || n % static_cast<uint64_t>(check.n_embd) != 0 ||
            n / static_cast<uint64_t>(check.n_embd) > check.limits.max_cells || n > r.left() / sizeof(float)) {
            throw MalformedBytes("an encoder output has the wrong size for this model");
        }
        std::vector<float> values(static_cast<size_t>(n));
        const std::vector<uint8_t> raw = r.blob(n * sizeof(float));
        std::memcpy(values.data(), raw.data(), raw.size());
        for (float v : values) {
            if (!std::isfinite(v)) {
                throw MalformedBytes("an encoder output holds NaN or infinity");
            }
        }
        c.embeddings.emplace(std::move(id), std::move(values));
    }
    c.tick = r.get<uint64_t>();
    const uint32_t n_history = r.count(4, kMaxHistory);
    for (uint32_t i = 0; i < n_history; ++i) {
        const uint32_t n = r.count(8, kMaxMessages);
        std::vector<uint64_t> prints(n);
        for (auto & p : prints) {
            p = r.get<uint64_t>();
        }
        slot.history.push_back(std::move(prints));
    }
    return slot;
}

[[noreturn]] void io_failure(const std::string & path, const std::string & what) {
    throw StateFileError("cannot write the state file " + path + ": " + what + " (" + std::strerror(errno) +
                         "); check that its folder exists and is writable, and that the disk has room");
}

std::string folder_of(const std::string & path) {
    const size_t slash = path.rfind('/');
    return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

}  // namespace

void write_state_file(const std::string & path, const std::string & fingerprint, const std::vector<SlotState> & slots) {
    Writer body;
    body.str(fingerprint);
    body.put<uint32_t>(static_cast<uint32_t>(slots.size()));
    for (const SlotState & slot : slots) {
        write_slot(body, slot);
    }
    Fnv1a64 sum;
    sum.add(body.out.data(), body.out.size());
    Writer head;
    head.bytes(kMagic, sizeof(kMagic));
    head.put<uint32_t>(kStateFileVersion);
    head.put<uint64_t>(body.out.size());

    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        io_failure(path, "cannot create " + tmp);
    }
    auto write_all = [&](const void * data, size_t n) {
        const auto * p = static_cast<const uint8_t *>(data);
        while (n > 0) {
            const ssize_t k = ::write(fd, p, n);
            if (k < 0 && errno == EINTR) {
                continue;
            }
            if (k <= 0) {
                return false;
            }
            p += k;
            n -= static_cast<size_t>(k);
        }
        return true;
    };
    const bool ok = write_all(head.out.data(), head.out.size()) && write_all(body.out.data(), body.out.size()) &&
                    write_all(&sum.value, sizeof(sum.value)) && ::fsync(fd) == 0;
    const int saved_errno = errno;
    ::close(fd);
    if (!ok) {
        ::unlink(tmp.c_str());
        errno = saved_errno;
        io_failure(path, "writing " + tmp + " failed");
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const int e = errno;
        ::unlink(tmp.c_str());
        errno = e;
        io_failure(path, "cannot rename " + tmp + " over it");
    }
    // the rename itself reaches the disk with the folder's entry
    const int dir = ::open(folder_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
        ::fsync(dir);
        ::close(dir);
    }
}

std::vector<SlotState> read_state_file(const std::string & path, const StateFileCheck & check) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw StateFileError("cannot open the state file " + path + " (" + std::strerror(errno) + ")");
    }
    std::vector<uint8_t> file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    try {
        Reader r(file.data(), file.size());
        const std::vector<uint8_t> magic = r.blob(sizeof(kMagic));
        if (std::memcmp(magic.data(), kMagic, sizeof(kMagic)) != 0) {
            throw MalformedBytes("it is not an ecso-edge state file");
        }
        const uint32_t version = r.get<uint32_t>();
        if (version != kStateFileVersion) {
            throw MalformedBytes("its format version is " + std::to_string(version) + ", this ecso-edge reads " +
                      std::to_string(kStateFileVersion));
        }
        const uint64_t n_body = r.get<uint64_t>();
        // (not n_body + 8 == left: a length near 2^64 wraps that sum onto a short file's size)
        if (r.left() < sizeof(uint64_t) || n_body != r.left() - sizeof(uint64_t)) {
            throw MalformedBytes("its length does not match its header (truncated?)");
        }
        const uint8_t * body = file.data() + (file.size() - r.left());
        Fnv1a64 sum;
        sum.add(body, static_cast<size_t>(n_body));
        uint64_t stored = 0;
        std::memcpy(&stored, body + n_body, sizeof(stored));
        if (stored != sum.value) {
            throw MalformedBytes("its checksum does not match (the file is damaged)");
        }
        Reader b(body, static_cast<size_t>(n_body));
        const std::string fingerprint = b.str();
        const std::string difference = fingerprint_difference(check.fingerprint, fingerprint);
        if (!difference.empty()) {
            throw MalformedBytes("it was written for another model or context: " + difference);
        }
        const uint32_t n_slots = b.count(4, kMaxSlots);
        std::vector<SlotState> slots;
        for (uint32_t i = 0; i < n_slots; ++i) {
            slots.push_back(read_slot(b, check));
        }
        if (b.left() != 0) {
            throw MalformedBytes("it has bytes after its last slot");
        }
        return slots;
    } catch (const MalformedBytes & e) {
        throw StateFileError("refused the state file " + path + ": " + e.what() +
                             "; the session keeps its own cache (delete the file, or save a new one)");
    }
}

std::string fingerprint_difference(const std::string & expected, const std::string & found) {
    std::istringstream a(expected);
    std::istringstream b(found);
    std::string x;
    std::string y;
    for (;;) {
        const bool more_a = static_cast<bool>(std::getline(a, x));
        const bool more_b = static_cast<bool>(std::getline(b, y));
        if (!more_a && !more_b) {
            return "";
        }
        if (x != y || more_a != more_b) {
            const std::string key = (more_a ? x : y).substr(0, (more_a ? x : y).find('='));
            auto value = [&key](bool more, const std::string & line) {
                return more && line.compare(0, key.size() + 1, key + "=") == 0 ? line.substr(key.size() + 1)
                                                                               : std::string("(none)");
            };
            return key + " is " + value(more_b, y) + " in the file, " + value(more_a, x) + " here";
        }
    }
}

std::string file_fingerprint(const std::string & path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) {
        return "unreadable";
    }
    const uint64_t size = static_cast<uint64_t>(in.tellg());
    Fnv1a64 h;
    std::vector<char> buf(1 << 20);
    auto hash_range = [&](uint64_t from, uint64_t n) {
        in.seekg(static_cast<std::streamoff>(from));
        while (n > 0 && in) {
            const size_t k = static_cast<size_t>(std::min<uint64_t>(n, buf.size()));
            in.read(buf.data(), static_cast<std::streamsize>(k));
            h.add(buf.data(), static_cast<size_t>(in.gcount()));
            n -= k;
        }
    };
    hash_range(0, std::min(size, kFingerprintWindow));
    if (size > kFingerprintWindow) {
        const uint64_t tail = std::min(size - kFingerprintWindow, kFingerprintWindow);
        hash_range(size - tail, tail);
    }
    char out[64];
    std::snprintf(out, sizeof(out), "%llu:%016llx", static_cast<unsigned long long>(size),
                  static_cast<unsigned long long>(h.value));
    return out;
}

}  // namespace ecso
