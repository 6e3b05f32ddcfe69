// Process-wide log router for llama.cpp and mtmd.
#include "ecso/logging.hpp"

#include <atomic>
#include <cstdio>
#include <deque>
#include <mutex>

#include "llama.h"
#include "mtmd-helper.h"
#include "mtmd.h"

namespace ecso {
namespace {

std::atomic<bool> g_verbose{false};
std::mutex g_mutex;
std::deque<std::string> g_errors;  // bounded: only the last few lines matter for a message
std::string g_partial;             // llama.cpp may log one line in several calls

void log_router(ggml_log_level level, const char * text, void * /*user_data*/) {
    if (text == nullptr) {
        return;
    }
    if (g_verbose.load(std::memory_order_relaxed)) {
        std::fputs(text, stderr);
    }
    if (level != GGML_LOG_LEVEL_ERROR && level != GGML_LOG_LEVEL_CONT) {
        return;
    }
    std::lock_guard<std::mutex> lock(g_mutex);
    if (level == GGML_LOG_LEVEL_CONT && g_partial.empty()) {
        return;
    }
    g_partial += text;
    if (!g_partial.empty() && g_partial.back() == '\n') {
        g_partial.pop_back();
        g_errors.push_back(g_partial);
        g_partial.clear();
        while (g_errors.size() > 4) {
            g_errors.pop_front();
        }
    }
}

}  // namespace

void set_verbose_logging(bool verbose) {
    g_verbose.store(verbose);
    llama_log_set(log_router, nullptr);
    mtmd_log_set(log_router, nullptr);
    mtmd_helper_log_set(log_router, nullptr);
}

std::string last_log_suffix() {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_errors.empty()) {
        return "";
    }
    std::string joined;
    for (std::string line : g_errors) {
        // one message line: llama.cpp's log lines can carry their own newlines
        for (auto & c : line) {
            if (c == '\n' || c == '\r') {
                c = ' ';
            }
        }
        while (!line.empty() && line.back() == ' ') {
            line.pop_back();
        }
        if (!joined.empty()) {
            joined += "; ";
        }
        joined += line;
    }
    g_errors.clear();
    return " (llama.cpp: " + joined + ")";
}

void clear_log_errors() {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_errors.clear();
    g_partial.clear();
}

}  // namespace ecso
