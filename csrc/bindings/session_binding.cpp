// Binds ecso::EcsoSession as ecso_edge._core.Session: copies the pixels in, releases the GIL for
// the whole request, keeps Ctrl-C working, and forwards streamed text to a Python callable.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <exception>
#include <memory>

#include "bindings/interruptible.hpp"
#include "bindings/registry.hpp"
#include "ecso/errors.hpp"
#include "ecso/session.hpp"

namespace py = pybind11;

namespace ecso_bindings {
namespace {

ecso::RgbImage copy_pixels(const py::buffer & pixels, uint32_t width, uint32_t height) {
    const py::buffer_info info = pixels.request();
    const size_t n_bytes = static_cast<size_t>(info.size) * static_cast<size_t>(info.itemsize);
    const bool contiguous = info.ndim <= 1 || info.strides.back() == info.itemsize;
    if (info.itemsize != 1 || !contiguous) {
        throw ecso::ImageError("pixels must be a contiguous buffer of uint8 RGB values");
    }
    ecso::RgbImage image;
    image.width = width;
    image.height = height;
    image.pixels.resize(n_bytes);
    if (n_bytes > 0) {
        std::memcpy(image.pixels.data(), info.ptr, n_bytes);
    }
    return image;
}

// Calls a Python callable from the thread running the request. A Python exception in it cancels
// the call (through its token) and is re-raised to the caller afterwards; nothing unwinds
// through the core.
class PythonCallback {
public:
    PythonCallback(py::object callback, std::shared_ptr<ecso::CancelToken> token)
        : callback_(std::move(callback)), token_(std::move(token)) {}

    bool empty() const { return callback_.is_none(); }

    template <class... Args>
    void operator()(Args &&... args) {
        py::gil_scoped_acquire gil;
        if (error_) {
            return;
        }
        try {
            callback_(std::forward<Args>(args)...);
        } catch (py::error_already_set &) {
            error_ = std::current_exception();
            token_->cancel();
        }
    }

    void rethrow_if_failed() const {
        if (error_) {
            std::rethrow_exception(error_);
        }
    }

private:
    py::object callback_;
    std::shared_ptr<ecso::CancelToken> token_;
    std::exception_ptr error_;
};

// One call's options: the Python callables wrapped for the core, and its token.
struct PythonCall {
    PythonCall(int32_t max_tokens, const py::object & on_text, const py::object & on_progress,
               std::shared_ptr<ecso::CancelToken> cancel)
        : token(cancel ? std::move(cancel) : std::make_shared<ecso::CancelToken>()),
          text(on_text, token),
          progress(on_progress, token) {
        options.max_tokens = max_tokens;
        options.cancel = token;
        if (!text.empty()) {
            options.on_text = [this](const std::string & piece) { text(piece); };
        }
        if (!progress.empty()) {
            options.on_progress = [this](const ecso::Progress & p) { progress(p.step, p.phase, p.done, p.total); };
        }
    }
    PythonCall(const PythonCall &) = delete;
    PythonCall & operator=(const PythonCall &) = delete;

    // Runs `work` with the GIL released and Ctrl-C served; re-raises a callback's own exception
    // in place of the CancelledError it caused.
    template <class Work>
    ecso::EcsoResult run(Work work) {
        try {
            ecso::EcsoResult result = call_interruptibly(work, [this] { token->cancel(); });
            rethrow_if_failed();
            return result;
        } catch (const ecso::CancelledError &) {
            rethrow_if_failed();
            throw;
        }
    }

    void rethrow_if_failed() const {
        text.rethrow_if_failed();
        progress.rethrow_if_failed();
    }

    std::shared_ptr<ecso::CancelToken> token;
    PythonCallback text;
    PythonCallback progress;
    ecso::CallOptions options;
};

enum class Mode { Protected, Direct };

ecso::EcsoResult request(ecso::EcsoSession & session, Mode mode, const py::buffer & pixels, uint32_t width,
                         uint32_t height, const std::string & query, int32_t max_tokens, const py::object & on_text,
                         const py::object & on_progress, std::shared_ptr<ecso::CancelToken> cancel,
                         std::optional<bool> force_verdict = std::nullopt) {
    const ecso::RgbImage image = copy_pixels(pixels, width, height);
    PythonCall call(max_tokens, on_text, on_progress, std::move(cancel));
    call.options.force_verdict = force_verdict;
    return call.run([&]() {
        return mode == Mode::Protected ? session.run(image, query, call.options)
                                       : session.answer(image, query, call.options);
    });
}

// (role, [text | (pixels, width, height), ...]) per message, as ecso_edge.session builds them. The
// pixels are copied before the GIL is released.
ecso::Conversation conversation_from(const py::list & messages) {
    ecso::Conversation out;
    for (size_t i = 0; i < messages.size(); ++i) {
        const auto message = messages[i].cast<py::tuple>();
        ecso::ChatMessage m;
        m.role = message[0].cast<std::string>();
        for (const py::handle part : message[1].cast<py::list>()) {
            if (py::isinstance<py::tuple>(part)) {
                const auto image = part.cast<py::tuple>();
                m.content.push_back({std::string(), std::make_shared<ecso::RgbImage>(copy_pixels(
                                                        image[0].cast<py::buffer>(), image[1].cast<uint32_t>(),
                                                        image[2].cast<uint32_t>()))});
            } else {
                m.content.push_back({part.cast<std::string>(), nullptr});
            }
        }
        out.push_back(std::move(m));
    }
    return out;
}

// A run_many item as ecso_edge.session builds it: (pixels, width, height, query, protect,
// response or None) or (messages, protect). Called with the GIL held; the pixels are copied.
ecso::EcsoSession::BatchItem batch_item_from(const py::handle & value) {
    const auto t = value.cast<py::tuple>();
    ecso::EcsoSession::BatchItem item;
    if (t.size() == 2) {
        item.messages = conversation_from(t[0].cast<py::list>());
        item.protect = t[1].cast<bool>();
        return item;
    }
    item.image = copy_pixels(t[0].cast<py::buffer>(), t[1].cast<uint32_t>(), t[2].cast<uint32_t>());
    item.query = t[3].cast<std::string>();
    item.protect = t[4].cast<bool>();
    if (!t[5].is_none()) {
        item.response = t[5].cast<std::string>();
    }
    return item;
}

const char * const kRunDoc = R"pbdoc(
The ECSO request: answer, judge, and on the unsafe path caption and eyes-closed answer.
`pixels` is width*height*3 bytes of RGB. `on_text(piece)` receives the FINAL answer as it is
decided: the first answer is held back until the judge has spoken. `on_progress(step, phase,
done, total)` reports where the call is (phase 'prefill', 'encode' or 'generate'); `cancel` is
the call's CancelToken (one is made when None).
)pbdoc";

py::dict cache_dict(const ecso::CacheStats & st) {
    py::dict d;
    d["conversations"] = st.conversations;
    d["state_bytes"] = st.state_bytes;
    d["images"] = st.images;
    d["embedding_bytes"] = st.embedding_bytes;
    d["captions"] = st.captions;
    d["hits"] = st.hits;
    d["shared_hits"] = st.shared_hits;
    d["misses"] = st.misses;
    d["evictions"] = st.evictions;
    return d;
}

}  // namespace

void register_session(py::module_ & m) {
    py::class_<ecso::EcsoSession>(m, "Session", R"pbdoc(
An ECSO session over a Model: one context whose KV cache holds a sequence per step.
Calls on one session are serialised (a second thread waits); cancel() may come from any thread.
)pbdoc")
        .def(py::init([](std::shared_ptr<ecso::Model> model, const ecso::EcsoConfig & config, int parallel,
                         std::shared_ptr<ecso::TextModel> judge_model, const std::string & judge_format) {
                 py::gil_scoped_release release;
                 return std::make_unique<ecso::EcsoSession>(std::move(model), config, parallel,
                                                            std::move(judge_model), judge_format);
             }),
             py::arg("model"), py::arg("config"), py::arg("parallel") = 1, py::arg("judge_model") = nullptr,
             py::arg("judge_format") = "")
        .def_property_readonly("judge_model", &ecso::EcsoSession::judge_model,
                               "Who judges step 2: 'self', or the guard model's file name.")
        .def_property_readonly("judge_format", &ecso::EcsoSession::judge_format)
        .def_readonly_static("max_parallel", &ecso::EcsoSession::kMaxParallel)
        .def_property_readonly("parallel", &ecso::EcsoSession::parallel)
        .def(
            "run_many",
            [](ecso::EcsoSession & s, size_t n, const py::object & source, const py::object & sink, int32_t max_tokens,
               std::shared_ptr<ecso::CancelToken> cancel) {
                PythonCall call(max_tokens, py::none(), py::none(), std::move(cancel));
                // Both run on the item's lane thread, with the GIL taken for the Python side only.
                const ecso::EcsoSession::ItemSource make = [&source](size_t i) {
                    py::gil_scoped_acquire gil;
                    return batch_item_from(source(i));
                };
                const ecso::EcsoSession::ItemSink deliver = [&sink](size_t i, const ecso::EcsoResult * result,
                                                                    std::exception_ptr error) {
                    py::gil_scoped_acquire gil;
                    py::object value = py::none();
                    if (result != nullptr) {
                        value = py::cast(*result);
                    } else {
                        try {
                            std::rethrow_exception(error);
                        } catch (py::error_already_set & e) {
                            value = e.value();
                        } catch (...) {
                            value = exception_object(std::current_exception());
                        }
                    }
                    sink(i, value);
                };
                call.run([&]() {
                    s.run_many(n, make, deliver, call.options);
                    return ecso::EcsoResult{};
                });
            },
            py::arg("n"), py::arg("source"), py::arg("sink"), py::kw_only(), py::arg("max_tokens"),
            py::arg("cancel") = py::none(),
            "Runs n requests, up to `parallel` at once: source(i) gives item i ((pixels, width, height, query, "
            "protect, response or None) or (messages, protect)), sink(i, result_or_exception) receives it on its thread. Items are "
            "handed out in order at scheduler rounds.")
        .def(
            "engine_stats",
            [](ecso::EcsoSession & s) {
                const ecso::EngineStats st = s.engine_stats();
                py::dict d;
                d["requests"] = st.requests;
                d["decode_calls"] = st.decode_calls;
                d["batched_tokens"] = st.batched_tokens;
                d["rounds"] = st.rounds;
                d["max_in_flight"] = st.max_in_flight;
                d["waiting"] = st.waiting;
                d["solo_seconds"] = st.solo_seconds;
                d["decode_seconds"] = st.decode_seconds;
                d["gap_seconds"] = st.gap_seconds;
                d["parallel"] = s.parallel();
                return d;
            },
            "Requests started, llama_decode calls, tokens evaluated over them, scheduler rounds, the most "
            "requests in flight at once, the calls waiting for a free slot now, and where the rounds' time went "
            "(solo work, merged decodes, gaps waiting for lanes).")
        .def(
            "run",
            [](ecso::EcsoSession & s, const py::buffer & pixels, uint32_t width, uint32_t height,
               const std::string & query, int32_t max_tokens, const py::object & on_text,
               const py::object & on_progress, std::shared_ptr<ecso::CancelToken> cancel,
               std::optional<bool> force_verdict) {
                return request(s, Mode::Protected, pixels, width, height, query, max_tokens, on_text, on_progress,
                               std::move(cancel), force_verdict);
            },
            py::arg("pixels"), py::arg("width"), py::arg("height"), py::arg("query"), py::kw_only(),
            py::arg("max_tokens"), py::arg("on_text") = py::none(), py::arg("on_progress") = py::none(),
            py::arg("cancel") = py::none(), py::arg("force_verdict") = py::none(), kRunDoc)
        .def(
            "answer",
            [](ecso::EcsoSession & s, const py::buffer & pixels, uint32_t width, uint32_t height,
               const std::string & query, int32_t max_tokens, const py::object & on_text,
               const py::object & on_progress, std::shared_ptr<ecso::CancelToken> cancel) {
                return request(s, Mode::Direct, pixels, width, height, query, max_tokens, on_text, on_progress,
                               std::move(cancel));
            },
            py::arg("pixels"), py::arg("width"), py::arg("height"), py::arg("query"), py::kw_only(),
            py::arg("max_tokens"), py::arg("on_text") = py::none(), py::arg("on_progress") = py::none(),
            py::arg("cancel") = py::none(),
            "Step 1 alone: the direct answer, no protection; `on_text` streams it live.")
        .def(
            "judge",
            [](ecso::EcsoSession & s, const py::buffer & pixels, uint32_t width, uint32_t height,
               const std::string & query, const std::string & response, const py::object & on_progress,
               std::shared_ptr<ecso::CancelToken> cancel) {
                const ecso::RgbImage image = copy_pixels(pixels, width, height);
                PythonCall call(1, py::none(), on_progress, std::move(cancel));
                return call.run([&]() { return s.judge(image, query, response, call.options); });
            },
            py::arg("pixels"), py::arg("width"), py::arg("height"), py::arg("query"), py::arg("response"),
            py::kw_only(), py::arg("on_progress") = py::none(), py::arg("cancel") = py::none(),
            "Step 2 alone on a given response: the judge's verdict (verdict_override does not apply).")
        .def(
            "chat",
            [](ecso::EcsoSession & s, const py::list & messages, int32_t max_tokens, const py::object & on_text,
               const py::object & on_progress, std::shared_ptr<ecso::CancelToken> cancel, bool protect,
               const std::optional<ecso::EcsoConfig> & sampling_from) {
                const ecso::Conversation conversation = conversation_from(messages);
                PythonCall call(max_tokens, on_text, on_progress, std::move(cancel));
                if (sampling_from) {
                    call.options.sampling = sampling_from->sampling;
                }
                return call.run([&]() { return s.chat(conversation, call.options, protect); });
            },
            py::arg("messages"), py::kw_only(), py::arg("max_tokens"), py::arg("on_text") = py::none(),
            py::arg("on_progress") = py::none(), py::arg("cancel") = py::none(), py::arg("protect") = true,
            py::arg("sampling_from") = py::none(),
            "ECSO over a conversation: messages are (role, [text | (pixels, width, height), ...]). `protect` "
            "False answers directly. `sampling_from`: an EcsoConfig whose sampling this call uses instead of "
            "the session's.")
        .def(
            "cache_stats",
            [](ecso::EcsoSession & s) {
                const ecso::CacheStats st = [&] {
                    py::gil_scoped_release release;  // waits for a call in progress
                    return s.cache_stats();
                }();
                return cache_dict(st);
            },
            "What chat() keeps between calls: conversations and images, with their bytes, and captions; the "
            "chat calls that found a saved conversation to continue (hits; shared_hits: another slot's or "
            "session's on the same Model) or none (misses), and the entries dropped for the bounds (evictions).")
        .def(
            "save_state",
            [](ecso::EcsoSession & s, const std::string & path) {
                py::gil_scoped_release release;  // waits for the calls in progress, then writes
                s.save_state(path);
            },
            py::arg("path"),
            "Writes what chat() keeps to `path`, atomically (the previous file or the new one, never a broken one).")
        .def(
            "load_state",
            [](ecso::EcsoSession & s, const std::string & path) {
                const ecso::CacheStats st = [&] {
                    py::gil_scoped_release release;
                    return s.load_state(path);
                }();
                return cache_dict(st);
            },
            py::arg("path"),
            "Replaces what chat() keeps with a state file's, after checking all of it (StateFileError: the "
            "cache is unchanged); returns cache_stats() after the load.")
        .def(
            "clear_cache",
            [](ecso::EcsoSession & s) {
                py::gil_scoped_release release;
                s.clear_cache();
            },
            "Drops what chat() keeps between calls.")
        .def("cancel", &ecso::EcsoSession::cancel,
             "Cancels the call in progress (from any thread): it raises CancelledError. Does nothing when no "
             "call runs; to cancel a call that may not have started yet, cancel its own CancelToken.")
        .def_property_readonly("config", [](const ecso::EcsoSession & s) { return s.config(); },
                               "A copy of the session's EcsoConfig.")
        .def_property_readonly("n_ctx", &ecso::EcsoSession::n_ctx)
        .def_property_readonly("chat_template_name", [](const ecso::EcsoSession & s) { return s.frame().template_name; })
        .def_property_readonly("prompt_head", [](const ecso::EcsoSession & s) { return s.frame().head; },
                               "The chat-template text before the user's message.")
        .def_property_readonly("prompt_tail", [](const ecso::EcsoSession & s) { return s.frame().tail; },
                               "The chat-template text after the user's message.");
}

}  // namespace ecso_bindings
