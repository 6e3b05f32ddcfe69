// Typed errors of the ECSO core. Every failure a user can cause or fix is one of these, with a
// message that says what is wrong and what to do; bindings map each class to one Python class.
#pragma once

#include <stdexcept>
#include <string>

namespace ecso {

// Base of all core errors. Thread-safe to throw from any call of the core.
class Error : public std::runtime_error {
public:
    explicit Error(const std::string & message) : std::runtime_error(message) {}
};

// A model or projector file is missing, unreadable, not GGUF, malformed, or does not fit its pair.
class ModelLoadError : public Error { using Error::Error; };

// An image is empty, too large, or could not be preprocessed or encoded by the projector.
class ImageError : public Error { using Error::Error; };

// A prompt (or the KV cache as a whole) does not fit the context window.
class ContextOverflowError : public Error { using Error::Error; };

// A run was stopped by cancel() or by the host's interrupt poll (Ctrl-C).
class CancelledError : public Error { using Error::Error; };

// A configuration value or argument is invalid (bad template, unknown rule, bad sampling value).
class ConfigError : public Error { using Error::Error; };

// A state file cannot be written, or is not one this session can load (damaged, truncated, from
// another model or context, or from another format version).
class StateFileError : public Error { using Error::Error; };

// llama.cpp could not allocate what was asked: a context (its KV cache, its buffers) larger than the
// memory left, or an n_ctx whose cache is larger than the machine's memory. The message names the
// sizes asked for and the options that make them smaller.
class ResourceError : public Error { using Error::Error; };

// llama.cpp failed during evaluation for a reason the user did not cause.
class RuntimeFailure : public Error { using Error::Error; };

// Turns a llama.cpp status code into a typed exception; `what` names the operation.
void check_decode_status(int status, const char * what);

}  // namespace ecso
