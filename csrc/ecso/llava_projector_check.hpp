// Tensor-by-tensor validation of LLaVA-style projectors (mlp, mlp_norm; the ViT tower also for
// ldp/ldpv2): every tensor clip.cpp's llava graph dereferences, with its shape and type.
#pragma once

#include "ecso/gguf_check.hpp"
#include "ecso/gguf_file.hpp"

namespace ecso {

// The ViT body shared by the LLaVA family of projectors (clip.cpp's loader and llava graph).
void check_vision_tower(const GgufFile & f, ProjectorInfo & info);
// LLaVA-1.5's two-layer MLP, or the Yi-style variant with norms; sets output_n_embd.
void check_llava_mlp(const GgufFile & f, ProjectorInfo & info);
// LLaVA-1.6's slicing resolutions (clip.vision.image_grid_pinpoints), when present.
void check_grid_pinpoints(const GgufFile & f, ProjectorInfo & info);

}  // namespace ecso
