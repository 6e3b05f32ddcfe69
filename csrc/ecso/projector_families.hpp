// The projector types ecso-edge runs by default. A type joins the table once its family is tested
// end to end (tests/test_families.py): tokens equal llama.cpp's own evaluation, KV reuse is
// token-identical, its template frames the prompt, and its single-edit sweep has no crash. How a
// file of the type is made safe before mtmd loads it here follows from gguf_check.cpp: a tensor
// table (LLaVA) or the child-process check (projector_probe.hpp).
#pragma once

#include <string>

namespace ecso {

bool is_supported_projector_type(const std::string & type);

// "mlp, mlp_norm, gemma3, ...": for error messages.
std::string supported_projector_types();

}  // namespace ecso
