// ecso-selftest: runs ECSO requests on a model pair through the C++ core alone (no Python), the
// way a desktop application would embed it, checks the KV-reuse claims and walks the error paths.
// Usage: ecso-selftest TEXT_MODEL.gguf MMPROJ.gguf
// Exit status 0 when every check passes, 1 on a failed check, 2 on an error.
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <thread>

#include "ecso/ecso.hpp"
#include "ecso/token_batch.hpp"

namespace {

int g_failed = 0;
int g_passed = 0;

void expect(bool ok, const std::string & what) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    (ok ? g_passed : g_failed) += 1;
}

ecso::CallOptions tokens(int32_t max_tokens) {
    ecso::CallOptions call;
    call.max_tokens = max_tokens;
    return call;
}

ecso::RgbImage gradient(uint32_t w, uint32_t h) {
    ecso::RgbImage img;
    img.width = w;
    img.height = h;
    img.pixels.resize(static_cast<size_t>(w) * h * 3);
    for (uint32_t y = 0; y < h; ++y) {
        for (uint32_t x = 0; x < w; ++x) {
            uint8_t * p = &img.pixels[(static_cast<size_t>(y) * w + x) * 3];
            p[0] = static_cast<uint8_t>(x * 255 / (w - 1));
            p[1] = static_cast<uint8_t>(y * 255 / (h - 1));
            p[2] = static_cast<uint8_t>((x + y) % 256);
        }
    }
    return img;
}

template <class Error, class Call>
bool throws(Call call) {
    try {
        call();
    } catch (const Error &) {
        return true;
    } catch (const std::exception &) {
        return false;
    }
    return false;
}

// The error paths (refused files, a query over the context, a cancel from another thread), so
// that a sanitizer run of this program covers their cleanup as well.
void check_error_paths(const char * text, const char * mmproj, const ecso::ModelOptions & options,
                       const std::shared_ptr<const ecso::Model> & full_context) {
    expect(throws<ecso::ModelLoadError>([&] { ecso::Model(mmproj, mmproj, options); }),
           "errors: a projector passed as the text model is refused");
    expect(throws<ecso::ModelLoadError>([&] { ecso::Model(text, text, options); }),
           "errors: a text model passed as the projector is refused");
    ecso::ModelOptions small = options;
    small.n_ctx = 128;
    auto model = std::make_shared<const ecso::Model>(text, mmproj, small);
    ecso::EcsoSession session(model, ecso::EcsoConfig{});
    std::string long_query;
    for (int i = 0; i < 300; ++i) {
        long_query += "word ";
    }
    expect(throws<ecso::ContextOverflowError>([&] { session.run(gradient(48, 40), long_query, tokens(4)); }),
           "errors: a query longer than the context is refused");
    expect(session.run(gradient(48, 40), "What is this?", tokens(2)).steps.size() == 2,
           "errors: the session works after a refused query");
    ecso::EcsoConfig endless;
    endless.sampling.ignore_eos = true;
    endless.verdict_override = true;
    ecso::EcsoSession long_session(full_context, endless);  // room for ~2,000 tokens: long enough to cancel
    // The canceller waits for the state it cancels in (step 1 generating), never for a time.
    std::mutex m;
    std::condition_variable cv;
    bool generating = false;
    ecso::CallOptions call = tokens(1000000);
    call.on_progress = [&](const ecso::Progress & p) {
        if (std::string(p.phase) == "generate" && p.done == 8) {
            std::lock_guard<std::mutex> lock(m);
            generating = true;
            cv.notify_all();
        }
    };
    std::thread canceller([&] {
        std::unique_lock<std::mutex> lock(m);
        cv.wait(lock, [&] { return generating; });
        long_session.cancel();
    });
    const bool cancelled = throws<ecso::CancelledError>([&] { long_session.run(gradient(48, 40), "Go on.", call); });
    canceller.join();
    expect(cancelled, "errors: cancel() from another thread stops a request");
    ecso::CallOptions early = tokens(4);
    early.cancel = std::make_shared<ecso::CancelToken>();
    early.cancel->cancel();
    expect(throws<ecso::CancelledError>([&] { long_session.run(gradient(48, 40), "Go on.", early); }),
           "errors: a token cancelled before its call starts stops that call");
    expect(long_session.run(gradient(48, 40), "Go on.", tokens(2)).steps.size() == 4,
           "errors: the next call, with a token of its own, runs");
    ecso::TokenBatch batch(2);
    batch.add(1, 0, 0, false);
    batch.add(1, 1, 0, true);
    expect(throws<ecso::RuntimeFailure>([&] { batch.add(1, 2, 0, true); }) && batch.size() == 2,
           "errors: a full decode batch refuses another token instead of writing past its arrays");
}

ecso::EcsoResult run_once(const std::shared_ptr<const ecso::Model> & model, bool reuse, bool unsafe) {
    ecso::EcsoConfig config;
    config.reuse_kv = reuse;
    config.verdict_override = unsafe;
    ecso::EcsoSession session(model, config);
    return session.run(gradient(48, 40), "What is shown in this picture?", tokens(12));
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s TEXT_MODEL.gguf MMPROJ.gguf\n", argv[0]);
        return 2;
    }
    try {
        ecso::ModelOptions options;
        options.n_threads = 1;
        options.n_ctx = 2048;
        auto model = std::make_shared<const ecso::Model>(argv[1], argv[2], options);

        for (bool unsafe : {false, true}) {
            const std::string branch = unsafe ? "unsafe" : "safe";
            const ecso::EcsoResult reused = run_once(model, true, unsafe);
            const ecso::EcsoResult reference = run_once(model, false, unsafe);
            const size_t n_steps = unsafe ? 4 : 2;
            expect(reused.steps.size() == n_steps && reference.steps.size() == n_steps,
                   branch + ": " + std::to_string(n_steps) + " steps ran");
            int encodes_reused = 0;
            int encodes_reference = 0;
            bool same_tokens = reused.steps.size() == reference.steps.size();
            for (size_t i = 0; same_tokens && i < reused.steps.size(); ++i) {
                encodes_reused += reused.steps[i].image_encodes;
                encodes_reference += reference.steps[i].image_encodes;
                same_tokens = reused.steps[i].tokens == reference.steps[i].tokens;
            }
            expect(encodes_reused == 1, branch + ": image encoded once with reuse (" + std::to_string(encodes_reused) + ")");
            expect(encodes_reference == (unsafe ? 3 : 2),
                   branch + ": reference path re-encodes (" + std::to_string(encodes_reference) + ")");
            expect(same_tokens, branch + ": every step's tokens equal the reference path's");
            const int32_t shared = reused.template_prefix_tokens + reused.image_tokens;
            expect(reused.steps[1].tokens_reused >= shared,
                   branch + ": judge reused the [head, image] prefix (" + std::to_string(reused.steps[1].tokens_reused) +
                       " >= " + std::to_string(shared) + ")");
            expect(reused.answer == (unsafe ? reused.steps[3].text : reused.initial_answer) && reused.unsafe == unsafe,
                   branch + ": the answer comes from the right step");
        }
        check_error_paths(argv[1], argv[2], options, model);
    } catch (const std::exception & e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
    }
    std::printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
