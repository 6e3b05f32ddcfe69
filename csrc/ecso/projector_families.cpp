// The table of supported projector types (see projector_families.hpp).
#include "ecso/projector_families.hpp"

namespace ecso {
namespace {

constexpr const char * kSupported[] = {
    "mlp",       // LLaVA-1.5, LLaVA-1.6 (with grid pinpoints)
    "mlp_norm",  // LLaVA with a Yi-style projector
    "gemma3",    // Gemma 3
    "qwen2.5vl_merger",  // Qwen2.5-VL
    "idefics3",  // SmolVLM
    "qwen3vl_merger",  // Qwen3-VL
    "qwen2vl_merger",  // Qwen2-VL
    "pixtral",   // Pixtral, Mistral Small 3.1
    "internvl",  // InternVL
    "resampler",  // MiniCPM-V (2.5 to 4.5, and MiniCPM-o)
    "ldpv2",     // MobileVLM V2
    "ldp",       // MobileVLM V1
};

}  // namespace

bool is_supported_projector_type(const std::string & type) {
    for (const char * t : kSupported) {
        if (type == t) {
            return true;
        }
    }
    return false;
}

std::string supported_projector_types() {
    std::string out;
    for (const char * t : kSupported) {
        out += (out.empty() ? "" : ", ") + std::string(t);
    }
    return out;
}

}  // namespace ecso
