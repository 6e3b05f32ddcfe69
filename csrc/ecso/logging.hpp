// Routes llama.cpp / mtmd log output: quiet by default (errors kept, not printed), verbose on
// request. The last error lines are kept so exceptions can quote what llama.cpp said.
#pragma once

#include <string>

namespace ecso {

// Installs the log router into llama.cpp and mtmd (idempotent, process-wide).
// verbose=true prints everything llama.cpp logs to stderr; false prints nothing.
void set_verbose_logging(bool verbose);

// The recent error lines llama.cpp logged, formatted as " (llama.cpp: ...)", or "" if none.
// Clears them, so each message is quoted once.
std::string last_log_suffix();

// Forgets earlier error lines (called before an operation whose errors we want to quote).
void clear_log_errors();

}  // namespace ecso
