// What the loaded llama.cpp was built with and can run on (CPU features, GPU devices).
#pragma once

#include <string>
#include <vector>

namespace ecso {

struct BackendDevice {
    std::string name;         // e.g. "CPU", "CUDA0"
    std::string description;  // e.g. the GPU's marketing name
    std::string type;         // "cpu", "gpu", "igpu" or "accel"
    size_t memory_total = 0;  // bytes, 0 when unknown
    size_t memory_free = 0;
};

struct SystemInfo {
    std::string llama_system_info;  // llama_print_system_info(): CPU features and backends
    bool gpu_offload = false;       // llama_supports_gpu_offload()
    std::vector<BackendDevice> devices;
    // The CPU backend's extra buffer types, the ones weight repacking loads into ("CPU_REPACK", "AMX").
    std::vector<std::string> cpu_extra_buffer_types;
};

// Initialises llama.cpp's backends once per process (idempotent, thread-safe).
void ensure_backend_initialised();

SystemInfo system_info();

// Whether a model's weights are repacked into the CPU backend's extra buffer types when a load does
// not say (ModelOptions::repack): yes, unless one of them is AMX. The pinned llama.cpp's AMX matmul
// crashes the process (SIGSEGV in ggml_backend_amx_mul_mat) on the first quantized matmul on such a
// machine (measured: a 2-core Xeon VM with amx_int8, SmolLM2 Q4_1 and Gemma 3 Q4_K_M, through
// llama-cpp-python too; llama.cpp issue 20824), and llama.cpp turns the extra buffer types off only
// all together, as llama-server's --no-repack does.
bool repack_by_default();

}  // namespace ecso
