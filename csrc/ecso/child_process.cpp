// Runs a program in a child process with a deadline (see child_process.hpp).
#include "ecso/child_process.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char ** environ;

namespace ecso {

ChildResult run_child(const std::vector<std::string> & argv, const std::vector<std::string> & extra_env,
                      double timeout_seconds) {
    ChildResult result;
    int pipe_fds[2];
    if (::pipe(pipe_fds) != 0) {
        result.spawn_error = errno;
        return result;
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDERR_FILENO);
    posix_spawn_file_actions_addclose(&actions, pipe_fds[0]);
    posix_spawn_file_actions_addclose(&actions, pipe_fds[1]);
    std::vector<char *> args;
    for (const auto & a : argv) {
        args.push_back(const_cast<char *>(a.c_str()));
    }
    args.push_back(nullptr);
    pid_t pid = -1;
    std::vector<char *> env;
    for (char ** e = environ; *e != nullptr; ++e) {
        env.push_back(*e);
    }
    for (const auto & e : extra_env) {
        env.push_back(const_cast<char *>(e.c_str()));
    }
    env.push_back(nullptr);
    const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), env.data());
    posix_spawn_file_actions_destroy(&actions);
    ::close(pipe_fds[1]);
    if (rc != 0) {
        ::close(pipe_fds[0]);
        result.spawn_error = rc;
        return result;
    }
    result.started = true;
    constexpr size_t kKeep = 8192;
    char buf[4096];
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_seconds);
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            result.timed_out = true;
            ::kill(pid, SIGKILL);
            break;
        }
        pollfd pfd{pipe_fds[0], POLLIN, 0};
        const int ready = ::poll(&pfd, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
        if (ready < 0 && errno != EINTR) {
            break;
        }
        if (ready <= 0) {
            continue;
        }
        const ssize_t n = ::read(pipe_fds[0], buf, sizeof(buf));
        if (n > 0) {
            result.output.append(buf, static_cast<size_t>(n));
            if (result.output.size() > 2 * kKeep) {
                result.output.erase(0, result.output.size() - kKeep);
            }
        } else if (n == 0 || errno != EINTR) {
            break;
        }
    }
    ::close(pipe_fds[0]);
    while (::waitpid(pid, &result.status, 0) < 0) {
        if (errno != EINTR) {
            result.status = -1;  // e.g. SIGCHLD ignored by the application: the outcome is unknown
            break;
        }
    }
    return result;
}

}  // namespace ecso
