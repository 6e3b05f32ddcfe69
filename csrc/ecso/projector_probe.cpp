// Runs ecso-check-projector in a child process and caches its passes (see projector_probe.hpp).
#include "ecso/projector_probe.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <dlfcn.h>
#include <vector>

#include "ecso/child_process.hpp"
#include "ecso/errors.hpp"
#include "mtmd.h"

namespace ecso {
namespace {

constexpr const char * kProgram = "ecso-check-projector";
constexpr const char * kCacheFile = "projector-checks-v1.tsv";
constexpr size_t kCacheMaxLines = 2000;  // a line per checked file; rewritten to the newest half beyond this

std::string dirname_of(const std::string & path) {
    const size_t slash = path.rfind('/');
    return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

bool is_executable(const std::string & path) { return ::access(path.c_str(), X_OK) == 0; }

// The checker is installed beside the code that runs it: ecso_edge/bin/ next to the Python module,
// or the same folder as a program that links the core (the C++ self-test, a build tree).
// $ECSO_CHECK_PROJECTOR names another one (a packager's layout).
std::string find_checker() {
    if (const char * path = std::getenv("ECSO_CHECK_PROJECTOR"); path != nullptr && *path != '\0') {
        if (!is_executable(path)) {
            throw ConfigError(std::string("the environment variable ECSO_CHECK_PROJECTOR names '") + path +
                              "', which is not an executable file. Point it at ecso-check-projector, or unset it");
        }
        return path;
    }
    Dl_info info{};
    if (dladdr(reinterpret_cast<void *>(&probe_projector), &info) != 0 && info.dli_fname != nullptr) {
        const std::string dir = dirname_of(info.dli_fname);
        for (const std::string & candidate : {dir + "/bin/" + kProgram, dir + "/" + kProgram}) {
            if (is_executable(candidate)) {
                return candidate;
            }
        }
    }
    return std::string();
}

// A file's identity for the cache: a file edited in place changes its size or modification time.
std::string file_identity(const std::string & path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        return std::string();
    }
#ifdef __APPLE__
    const long long mtime_ns = static_cast<long long>(st.st_mtimespec.tv_sec) * 1000000000LL + st.st_mtimespec.tv_nsec;
#else
    const long long mtime_ns = static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
#endif
    return path + "|" + std::to_string(static_cast<unsigned long long>(st.st_ino)) + "|" +
           std::to_string(static_cast<long long>(st.st_size)) + "|" + std::to_string(mtime_ns);
}

// The llama.cpp build is the libmtmd file this process runs: another llama.cpp is another file.
std::string llama_build_identity() {
    Dl_info info{};
    if (dladdr(reinterpret_cast<void *>(&mtmd_init_from_file), &info) == 0 || info.dli_fname == nullptr) {
        return std::string();
    }
    return file_identity(info.dli_fname);
}

std::string cache_key(const std::string & text_model_path, const std::string & mmproj_path, const ProbeOptions & o) {
    const std::string build = llama_build_identity();
    const std::string text = file_identity(text_model_path);
    const std::string mmproj = file_identity(mmproj_path);
    if (build.empty() || text.empty() || mmproj.empty()) {
        return std::string();
    }
    std::string key = mmproj + "\t" + text + "\t" + build + "\t" + (o.use_gpu ? "gpu" : "cpu") + "\t" + o.flash_attn;
    // one record per line: a path holding a line break or the separator is simply not cached
    if (key.find('\n') != std::string::npos || key.find('\r') != std::string::npos ||
        std::count(key.begin(), key.end(), '\t') != 4) {
        return std::string();
    }
    return key;
}

std::string cache_path() { return probe_cache_dir() + "/" + kCacheFile; }

std::vector<std::string> cache_lines() {
    std::vector<std::string> lines;
    std::ifstream in(cache_path());
    for (std::string line; std::getline(in, line);) {
        lines.push_back(line);
    }
    return lines;
}

bool make_dirs(const std::string & dir) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) == 0) {
        return S_ISDIR(st.st_mode);
    }
    const size_t slash = dir.rfind('/');
    if (slash != std::string::npos && slash > 0 && !make_dirs(dir.substr(0, slash))) {
        return false;
    }
    return ::mkdir(dir.c_str(), 0755) == 0 || errno == EEXIST;
}

// Best effort: a cache that cannot be written only means the next load checks again.
void cache_add(const std::string & key) {
    if (!make_dirs(probe_cache_dir())) {
        return;
    }
    const std::string path = cache_path();
    const std::vector<std::string> lines = cache_lines();
    if (lines.size() >= kCacheMaxLines) {
        const std::string tmp = path + ".tmp" + std::to_string(::getpid());
        {
            std::ofstream out(tmp, std::ios::trunc);
            for (size_t i = lines.size() - kCacheMaxLines / 2; i < lines.size(); ++i) {
                out << lines[i] << "\n";
            }
        }
        std::rename(tmp.c_str(), path.c_str());
    }
    // One write() of one line with O_APPEND: processes loading at once never interleave a record.
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        return;
    }
    const std::string record = key + "\n";
    const ssize_t written = ::write(fd, record.data(), record.size());
    (void)written;
    ::close(fd);
}

// How long the check may take: a projector of Gemma 3 4B's size takes about a minute on two
// cores; a file that sends mtmd into an endless loop must not hang the load.
constexpr double kDefaultTimeoutSeconds = 900;

double check_timeout_seconds() {
    const char * value = std::getenv("ECSO_PROJECTOR_CHECK_TIMEOUT");
    if (value == nullptr || *value == '\0') {
        return kDefaultTimeoutSeconds;
    }
    char * end = nullptr;
    const double seconds = std::strtod(value, &end);
    if (end == value || *end != '\0' || !(seconds > 0) || seconds > 1e7) {
        throw ConfigError(std::string("the environment variable ECSO_PROJECTOR_CHECK_TIMEOUT is '") + value +
                          "', not a number of seconds between 0 and 10000000 (exclusive of 0). Set it to how long "
                          "the projector check may take, e.g. 900, or unset it");
    }
    return seconds;
}

// The line of the child's output that names the cause.
std::string telling_line(const std::string & output) {
    std::vector<std::string> lines;
    size_t start = 0;
    while (start < output.size()) {
        size_t end = output.find('\n', start);
        if (end == std::string::npos) {
            end = output.size();
        }
        std::string line = output.substr(start, end - start);
        while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) {
            line.pop_back();
        }
        if (!line.empty()) {
            lines.push_back(line);
        }
        start = end + 1;
    }
    // The first error is the cause: ggml's abort ("file.cpp:123: message", GGML_ASSERT among them),
    // else llama.cpp's first failure line, else this program's own.
    auto is_abort = [](const std::string & line) {
        for (const char * ext : {".c:", ".cpp:", ".h:"}) {
            const size_t at = line.find(ext);
            if (at != std::string::npos) {
                size_t i = at + std::strlen(ext);
                const size_t digits = i;
                while (i < line.size() && std::isdigit(static_cast<unsigned char>(line[i]))) {
                    ++i;
                }
                if (i > digits && line.compare(i, 2, ": ") == 0) {
                    return true;
                }
            }
        }
        return false;
    };
    auto is_ours = [](const std::string & line) { return line.rfind("ecso-check-projector:", 0) == 0; };
    std::string best;
    for (const auto & line : lines) {
        if (best.empty() && is_abort(line)) {
            best = line;
        }
    }
    for (const auto & line : lines) {
        if (best.empty() && !is_ours(line) &&
            (line.find("failed") != std::string::npos || line.find("error") != std::string::npos ||
             line.find("unable") != std::string::npos)) {
            best = line;
        }
    }
    for (const auto & line : lines) {
        if (best.empty() && is_ours(line)) {
            best = line;
        }
    }
    if (best.empty() && !lines.empty()) {
        best = lines.back();
    }
    return best.size() > 300 ? best.substr(0, 300) + "..." : best;
}

}  // namespace

std::string probe_cache_dir() {
    if (const char * dir = std::getenv("ECSO_CACHE_DIR"); dir != nullptr && *dir != '\0') {
        return dir;
    }
    if (const char * xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
        return std::string(xdg) + "/ecso-edge";
    }
    const char * home = std::getenv("HOME");
    return std::string(home != nullptr && *home != '\0' ? home : "/tmp") + "/.cache/ecso-edge";
}

ProbeOutcome probe_projector(const std::string & text_model_path, const std::string & mmproj_path,
                             const ProbeOptions & options) {
    const std::string where = "projector (mmproj) '" + mmproj_path + "': ";
    const std::string key = cache_key(text_model_path, mmproj_path, options);
    const std::vector<std::string> cached = key.empty() ? std::vector<std::string>() : cache_lines();
    if (std::find(cached.begin(), cached.end(), key) != cached.end()) {
        return ProbeOutcome::kCached;
    }
    const std::string checker = find_checker();
    if (checker.empty()) {
        throw ModelLoadError(where + std::string("the check program ") + kProgram +
                             " was not found beside ecso-edge's library. The installation is incomplete; reinstall "
                             "ecso-edge (pip install --force-reinstall ecso-edge)");
    }
    const double timeout = check_timeout_seconds();
    // --parent: the checker ends itself when this process dies first (killed during the check)
    std::vector<std::string> argv = {checker,       text_model_path, mmproj_path, "--threads",
                                     std::to_string(options.n_threads), "--flash-attn", options.flash_attn,
                                     "--parent",    std::to_string(::getpid())};
    if (options.use_gpu) {
        argv.push_back("--gpu");
    }
    // ggml prints a crash's backtrace through gdb when it can: seconds of noise around the one
    // line that names the cause, so the child does without.
    const ChildResult child = run_child(argv, {"GGML_NO_BACKTRACE=1"}, timeout);
    if (!child.started) {
        throw ModelLoadError(where + "the check program '" + checker + "' could not be started (" +
                             std::strerror(child.spawn_error) + "). Check that it is executable, or reinstall ecso-edge");
    }
    if (child.timed_out) {
        char seconds[32];
        std::snprintf(seconds, sizeof(seconds), "%g", timeout);
        throw ModelLoadError(where + "the check process loading it did not finish within " + seconds +
                             " s, and was stopped. The file is likely damaged (mtmd loops on it); if it is a very "
                             "large projector on a slow machine, raise ECSO_PROJECTOR_CHECK_TIMEOUT (seconds)");
    }
    if (WIFEXITED(child.status) && WEXITSTATUS(child.status) == 0 && child.output.find("ok") != std::string::npos) {
        if (!key.empty()) {
            cache_add(key);
        }
        return ProbeOutcome::kChecked;
    }
    const std::string said = telling_line(child.output);
    const std::string quote = said.empty() ? std::string() : " (llama.cpp: " + said + ")";
    if (WIFSIGNALED(child.status)) {
        const int sig = WTERMSIG(child.status);
        const char * name = sig == SIGABRT ? "SIGABRT" : sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS"
                          : sig == SIGKILL ? "SIGKILL" : sig == SIGFPE ? "SIGFPE" : "a signal";
        throw ModelLoadError(where + "llama.cpp crashed loading it (" + name + " in a check process, so this one is "
                             "unharmed)" + quote +
                             ". The file is damaged, or was written for another llama.cpp version; re-download it, "
                             "or re-convert it with llama.cpp's convert_hf_to_gguf.py --mmproj (MobileVLM: "
                             "tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py)");
    }
    throw ModelLoadError(where + "mtmd could not load it" + quote +
                         ". Use the mmproj file published with this text model, converted by a current llama.cpp");
}

}  // namespace ecso
