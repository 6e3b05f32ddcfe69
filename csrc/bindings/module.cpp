// The private module ecso_edge._core: binds the C++ core; no logic of its own.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/registry.hpp"
#include "ecso/system_info.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "ecso-edge's C++ core (private: use the ecso_edge package)";
    ecso_bindings::register_errors(m);
    ecso_bindings::register_config(m);
    ecso_bindings::register_model(m);
    ecso_bindings::register_text_model(m);
    ecso_bindings::register_guard_judge(m);
    ecso_bindings::register_result(m);
    ecso_bindings::register_cancel_token(m);
    ecso_bindings::register_session(m);
    ecso_bindings::register_guard_formats(m);

    m.def(
        "system_info",
        [] {
            const ecso::SystemInfo info = ecso::system_info();
            py::list devices;
            for (const auto & d : info.devices) {
                py::dict dev;
                dev["name"] = d.name;
                dev["description"] = d.description;
                dev["type"] = d.type;
                dev["memory_total"] = d.memory_total;
                dev["memory_free"] = d.memory_free;
                devices.append(dev);
            }
            py::dict out;
            out["llama_system_info"] = info.llama_system_info;
            out["gpu_offload"] = info.gpu_offload;
            out["devices"] = devices;
            out["cpu_extra_buffer_types"] = info.cpu_extra_buffer_types;
            out["repack_by_default"] = ecso::repack_by_default();
            return out;
        },
        R"pbdoc(What the loaded llama.cpp supports: CPU features, GPU offload and backend devices.)pbdoc");
}
