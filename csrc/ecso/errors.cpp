// The single place where llama.cpp status codes become typed core exceptions.
#include "ecso/errors.hpp"

#include "ecso/logging.hpp"

namespace ecso {

void check_decode_status(int status, const char * what) {
    if (status == 0) {
        return;
    }
    const std::string where = std::string(what) + ": ";
    switch (status) {
        case 1:
            // llama_decode: no KV slot for the batch.
            throw ContextOverflowError(where + "the KV cache is full (no free slot for the batch). "
                                       "Raise n_ctx or lower the token limits.");
        case 2:
            throw CancelledError(std::string("cancelled during ") + what);
        case -1:
            throw ConfigError(where + "llama.cpp rejected the batch as invalid" + last_log_suffix());
        default:
            throw RuntimeFailure(where + "llama.cpp failed with status " + std::to_string(status) +
                                 last_log_suffix());
    }
}

}  // namespace ecso
