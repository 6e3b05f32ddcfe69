// Backend initialisation and the device inventory of the loaded llama.cpp.
#include "ecso/system_info.hpp"

#include <algorithm>
#include <mutex>

#include "ggml-backend.h"
#include "llama.h"

namespace ecso {

void ensure_backend_initialised() {
    static std::once_flag once;
    std::call_once(once, [] {
        // llama_backend_init is reference-free and safe to call when llama_cpp already did.
        llama_backend_init();
        if (ggml_backend_reg_count() == 0) {
            // wheels built with GGML_BACKEND_DL ship backends as loadable modules
            ggml_backend_load_all();
        }
    });
}

namespace {
std::vector<std::string> cpu_extra_buffer_types() {
    std::vector<std::string> names;
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (cpu == nullptr) {
        return names;
    }
    auto get = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(cpu), "ggml_backend_dev_get_extra_bufts"));
    for (ggml_backend_buffer_type_t * b = get ? get(cpu) : nullptr; b != nullptr && *b != nullptr; ++b) {
        names.emplace_back(ggml_backend_buft_name(*b));
    }
    return names;
}
}  // namespace

SystemInfo system_info() {
    ensure_backend_initialised();
    SystemInfo info;
    info.llama_system_info = llama_print_system_info();
    info.gpu_offload = llama_supports_gpu_offload();
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        BackendDevice d;
        d.name = ggml_backend_dev_name(dev);
        d.description = ggml_backend_dev_description(dev);
        switch (ggml_backend_dev_type(dev)) {
            case GGML_BACKEND_DEVICE_TYPE_CPU: d.type = "cpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_GPU: d.type = "gpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_IGPU: d.type = "igpu"; break;
            default: d.type = "accel"; break;
        }
        ggml_backend_dev_memory(dev, &d.memory_free, &d.memory_total);
        info.devices.push_back(d);
    }
    info.cpu_extra_buffer_types = cpu_extra_buffer_types();
    return info;
}

bool repack_by_default() {
    ensure_backend_initialised();
    const std::vector<std::string> names = cpu_extra_buffer_types();
    return std::find(names.begin(), names.end(), "AMX") == names.end();
}

}  // namespace ecso
