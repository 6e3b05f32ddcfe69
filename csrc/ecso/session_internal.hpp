// Internals shared by the decoding engine and the request plans (single_turn_plan.cpp,
// conversation_plan.cpp); not part of the public header.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>

#include "ecso/call_options.hpp"
#include "ecso/config.hpp"
#include "ecso/errors.hpp"
#include "ecso/image.hpp"
#include "ecso/utf8.hpp"

namespace ecso {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ImageError for an image the core cannot take: empty, over `max_pixels`, or a buffer of the
// wrong size.
inline void check_image(const RgbImage & image, uint64_t max_pixels) {
    if (image.width == 0 || image.height == 0) {
        throw ImageError("the image is empty (" + std::to_string(image.width) + "x" + std::to_string(image.height) +
                         " pixels)");
    }
    const uint64_t pixels = static_cast<uint64_t>(image.width) * image.height;
    if (pixels > max_pixels) {
        throw ImageError("the image has " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                         " pixels, over the limit of " + std::to_string(max_pixels) +
                         "; downscale it or raise EcsoConfig.max_image_pixels");
    }
    if (image.pixels.size() != pixels * 3) {
        throw ImageError("the pixel buffer has " + std::to_string(image.pixels.size()) + " bytes but " +
                         std::to_string(image.width) + "x" + std::to_string(image.height) + " RGB needs " +
                         std::to_string(pixels * 3));
    }
}

// Tokens the judge may generate: 0 under the logits rule, which reads the prompt's logits.
inline int32_t judge_token_limit(const EcsoConfig & config) {
    return config.verdict_rule == VerdictRule::Logits ? 0 : config.max_tokens_judge;
}

// Positions the judge's quote leaves for its verdict: the paper's verdict is a token or two, and
// 16 is the default max_tokens_judge. The judge's generation is capped by the room it then has.
inline int32_t judge_reserve(int32_t judge_tokens) { return std::max(1, std::min(judge_tokens, 16)); }

// The judge's prompt quoting as much of the response as `cut_chars` and `room` (KV cells) allow:
// `build(chars)` makes the prompt quoting the first `chars` characters of a `response_chars`-long
// response. When the context cannot hold the whole quote, the largest cut that fits (the empty
// quote fits: the request was refused before step 1 otherwise). The same cut on every path keeps
// reuse exact.
template <class Build>
auto largest_fitting_quote(Build build, size_t cut_chars, size_t response_chars, int32_t room) {
    auto prompt = build(cut_chars);
    if (prompt.n_cells() <= room) {
        return prompt;
    }
    size_t lo = 0;
    size_t hi = std::min(cut_chars, response_chars);
    while (lo < hi) {
        const size_t mid = lo + (hi - lo + 1) / 2;
        if (build(mid).n_cells() <= room) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return build(lo);
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
