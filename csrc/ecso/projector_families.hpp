// The projector types ecso-edge runs by default, the model family of each, and how a file of the
// type is made safe before mtmd loads it in this process. A type joins this table once its family
// is tested end to end (tests/test_families.py): tokens equal llama.cpp's own evaluation, KV reuse
// is token-identical, its template frames the prompt, and its single-edit sweep has no crash.
#pragma once

#include <string>

namespace ecso {

enum class ProjectorCheck {
    kTensorTable,   // gguf_check.cpp checks every tensor the graph dereferences (LLaVA)
    kChildProcess,  // projector_probe.cpp loads it once in ecso-check-projector first
};

struct ProjectorFamily {
    const char * type;    // clip.projector_type
    const char * family;  // e.g. "Gemma 3"
    ProjectorCheck check;
};

// nullptr for a type not in the table.
const ProjectorFamily * find_projector_family(const std::string & type);

// "mlp, mlp_norm, gemma3, ...": for error messages.
std::string supported_projector_types();

}  // namespace ecso
