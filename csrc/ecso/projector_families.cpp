// The table of supported projector types (see projector_families.hpp).
#include "ecso/projector_families.hpp"

namespace ecso {
namespace {

constexpr ProjectorFamily kFamilies[] = {
    {"mlp", "LLaVA-1.5 / LLaVA-1.6", ProjectorCheck::kTensorTable},
    {"mlp_norm", "LLaVA (Yi-style projector)", ProjectorCheck::kTensorTable},
    {"gemma3", "Gemma 3", ProjectorCheck::kChildProcess},
};

}  // namespace

const ProjectorFamily * find_projector_family(const std::string & type) {
    for (const auto & f : kFamilies) {
        if (type == f.type) {
            return &f;
        }
    }
    return nullptr;
}

std::string supported_projector_types() {
    std::string out;
    for (const auto & f : kFamilies) {
        out += (out.empty() ? "" : ", ") + std::string(f.type);
    }
    return out;
}

}  // namespace ecso
