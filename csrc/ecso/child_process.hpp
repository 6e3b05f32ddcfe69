// Running a helper program in a child process with a deadline, its stdout and stderr captured:
// what the projector check (projector_probe.cpp) needs so that a crash or an endless loop of
// llama.cpp on a damaged file happens in another process.
#pragma once

#include <string>
#include <vector>

namespace ecso {

struct ChildResult {
    int spawn_error = 0;  // posix_spawn's own error code (it leaves errno alone)
    bool started = false;
    bool timed_out = false;  // killed with SIGKILL at the deadline
    int status = 0;          // waitpid's status; -1 when the outcome is unknown
    std::string output;      // stdout and stderr together, the last few KB
};

// Runs argv[0] (a path) with argv, the environment plus `extra_env` ("NAME=value" entries).
ChildResult run_child(const std::vector<std::string> & argv, const std::vector<std::string> & extra_env,
                      double timeout_seconds);

}  // namespace ecso
