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
};

// Initialises llama.cpp's backends once per process (idempotent, thread-safe).
void ensure_backend_initialised();

SystemInfo system_info();

}  // namespace ecso
