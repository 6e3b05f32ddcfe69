// ecso-check-projector: loads a projector the way ecso-edge will, in a process of its own, so that
// a file mtmd would crash on (a tensor its loader treats as optional but its graph dereferences, a
// shape a ggml op asserts on) kills this process and not the application. ecso-edge runs it once
// per projector file and llama.cpp build for the types it cannot check tensor by tensor
// (csrc/ecso/projector_probe.cpp), and caches a pass.
//
// Usage: ecso-check-projector TEXT_MODEL.gguf MMPROJ.gguf [--gpu] [--threads N] [--flash-attn auto|on|off]
//        [--parent PID]
// With --parent, it ends itself (exit status 3) once PID is no longer its parent: a check that
// loops on a damaged file must not outlive the process that was killed while waiting for it.
// It loads the text model's vocabulary and hyperparameters only (mtmd needs its n_embd and special
// tokens), loads the projector with a warmup (clip.cpp builds and allocates the encoder graph),
// then preprocesses a square, a wide and a tall image (slicing, tiling and resizing all run) and
// encodes every chunk of the square one: ggml's CPU kernels assert on some values and types
// only when they compute (a negative norm epsilon, an f16 operand of an add, a pooling that does
// not divide the patch grid), so a graph that was only built would let those files through.
// Exit status: 0 and "ok" on stdout when every stage passed; 2 when llama.cpp refused the file
// cleanly (its error on stderr); a crash ends it by a signal.
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "llama.h"
#include "mtmd-helper.h"
#include "mtmd.h"

namespace {

void log_errors_only(ggml_log_level level, const char * text, void * /*user*/) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        std::fputs(text, stderr);
    }
}

int refuse(const char * what) {
    std::fprintf(stderr, "ecso-check-projector: %s\n", what);
    return 2;
}

std::vector<unsigned char> gradient(uint32_t w, uint32_t h) {
    std::vector<unsigned char> px(static_cast<size_t>(w) * h * 3);
    for (uint32_t y = 0; y < h; ++y) {
        for (uint32_t x = 0; x < w; ++x) {
            unsigned char * p = &px[(static_cast<size_t>(y) * w + x) * 3];
            p[0] = static_cast<unsigned char>(x * 255 / w);
            p[1] = static_cast<unsigned char>(y * 255 / h);
            p[2] = static_cast<unsigned char>((x + y) & 0xff);
        }
    }
    return px;
}

[[noreturn]] void orphaned() {
    std::fputs("ecso-check-projector: the process that started this check is gone\n", stderr);
    std::_Exit(3);
}

// getppid() changes when the parent dies (the child is re-parented): polled, so that it also
// works where Linux's PR_SET_PDEATHSIG does not exist.
void watch_parent(pid_t parent) {
    if (::getppid() != parent) {
        orphaned();
    }
    std::thread([parent] {
        for (;;) {
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
            if (::getppid() != parent) {
                orphaned();
            }
        }
    }).detach();
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s TEXT_MODEL.gguf MMPROJ.gguf [--gpu] [--threads N] [--flash-attn auto|on|off] "
                     "[--parent PID]\n",
                     argv[0]);
        return 64;
    }
    mtmd_context_params params = mtmd_context_params_default();
    params.use_gpu = false;
    params.n_threads = 1;
    params.print_timings = false;
    params.warmup = true;  // builds and reserves the encoder graph: where missing or misshapen tensors fail
    params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;
    for (int i = 3; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--gpu") {
            params.use_gpu = true;
        } else if (arg == "--threads" && i + 1 < argc) {
            params.n_threads = std::max(1, std::atoi(argv[++i]));
        } else if (arg == "--parent" && i + 1 < argc) {
            watch_parent(static_cast<pid_t>(std::atol(argv[++i])));
        } else if (arg == "--flash-attn" && i + 1 < argc) {
            const std::string v = argv[++i];
            params.flash_attn_type = v == "on"    ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                                     : v == "off" ? LLAMA_FLASH_ATTN_TYPE_DISABLED
                                                  : LLAMA_FLASH_ATTN_TYPE_AUTO;
        } else {
            return refuse(("unknown argument " + arg).c_str());
        }
    }
    llama_log_set(log_errors_only, nullptr);
    mtmd_helper_log_set(log_errors_only, nullptr);
    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    mparams.vocab_only = true;
    mparams.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (model == nullptr) {
        return refuse("llama.cpp could not load the text model's vocabulary");
    }
    mtmd_context * ctx = mtmd_init_from_file(argv[2], model, params);
    if (ctx == nullptr) {
        return refuse("mtmd could not load the projector");
    }
    if (!mtmd_support_vision(ctx)) {
        return refuse("the projector has no vision encoder");
    }
    const std::string marker = std::string(mtmd_default_marker());
    const uint32_t sizes[][2] = {{67, 67}, {640, 200}, {150, 900}};
    for (const auto & size : sizes) {
        const std::vector<unsigned char> px = gradient(size[0], size[1]);
        mtmd_bitmap * bitmap = mtmd_bitmap_init(size[0], size[1], px.data());
        mtmd_input_chunks * chunks = mtmd_input_chunks_init();
        const mtmd_input_text text{marker.c_str(), marker.size(), true, true};
        const mtmd_bitmap * bitmaps[] = {bitmap};
        int32_t status = mtmd_tokenize(ctx, chunks, &text, bitmaps, 1);
        const bool encode = &size == &sizes[0];
        for (size_t i = 0; status == 0 && encode && i < mtmd_input_chunks_size(chunks); ++i) {
            const mtmd_input_chunk * chunk = mtmd_input_chunks_get(chunks, i);
            if (mtmd_input_chunk_get_type(chunk) == MTMD_INPUT_CHUNK_TYPE_IMAGE &&
                mtmd_encode_chunk(ctx, chunk) != 0) {
                status = -1;
            }
        }
        mtmd_input_chunks_free(chunks);
        mtmd_bitmap_free(bitmap);
        if (status == -1) {
            return refuse("mtmd could not encode a 67x67 image");
        }
        if (status != 0) {
            return refuse(("mtmd could not preprocess a " + std::to_string(size[0]) + "x" + std::to_string(size[1]) +
                           " image (status " + std::to_string(status) + ")")
                              .c_str());
        }
    }
    mtmd_free(ctx);
    llama_model_free(model);
    std::puts("ok");
    return 0;
}
