// A session's kept conversations on disk: one file with what every slot's conversation cache
// holds (saved KV sequences and the token/image map of their cells, encoder outputs, captions)
// and the slot's recent conversations, behind a format version, a fingerprint of what the cells
// depend on and a checksum. Reading checks every count, size, id and KV header before anything
// reaches llama.cpp; a file that fails a check is refused whole (StateFileError), never partly
// loaded. Writing is atomic: a temporary file in the same folder, flushed to disk, then renamed
// over the old one, so a kill at any point leaves the previous file or the new one.
//
// Layout (little-endian): "ECSOSTAT", u32 version, u64 body length, body, u64 FNV-1a of the body.
// The body: the fingerprint text, then per slot its saved sequences, image uses, captions,
// encoder outputs, cache tick and conversation history.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ecso/conversation_cache.hpp"
#include "ecso/kv_state_check.hpp"

namespace ecso {

struct SlotState {
    ConversationCache::Snapshot cache;
    std::vector<std::vector<uint64_t>> history;  // message fingerprints of its last conversations
};

// What a file must agree with: the reading session's fingerprint and its context's limits.
struct StateFileCheck {
    std::string fingerprint;  // "key=value" lines (session_fingerprint)
    KvStateLayout layout;
    KvCheckLimits limits;
    int32_t n_embd = 0;       // an encoder output is a whole number of rows of this size
};

constexpr uint32_t kStateFileVersion = 1;

void write_state_file(const std::string & path, const std::string & fingerprint, const std::vector<SlotState> & slots);
std::vector<SlotState> read_state_file(const std::string & path, const StateFileCheck & check);

// The name of the first line where two fingerprints differ, with both values ("" when equal).
std::string fingerprint_difference(const std::string & expected, const std::string & found);

// Size and FNV-1a of a file's first and last 8 MiB: tells apart two model files (their headers
// and tensor data differ) without reading gigabytes on every save.
std::string file_fingerprint(const std::string & path);

}  // namespace ecso
