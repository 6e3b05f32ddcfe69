// Internals shared by the session's two translation units (the plan in session.cpp, the decoding
// engine in session_engine.cpp); not part of the public header.
#pragma once

#include <chrono>
#include <string>

#include "ecso/call_options.hpp"
#include "ecso/utf8.hpp"

namespace ecso {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Replays recorded text pieces (or streams live ones) so that the sink sees the stripped text.
class SinkWriter {
public:
    explicit SinkWriter(const TextSink & sink) : sink_(sink) {}
    void write(const std::string & piece) {
        if (!sink_) {
            return;
        }
        const std::string out = stream_.push(piece);
        if (!out.empty()) {
            sink_(out);
        }
    }

private:
    const TextSink & sink_;
    StrippedStream stream_;
};

}  // namespace ecso
