// An RGB image handed to the core. The core never decodes files: hosts (Python, an app) decode
// and pass packed 8-bit RGB pixels.
#pragma once

#include <cstdint>
#include <vector>

namespace ecso {

struct RgbImage {
    uint32_t width = 0;
    uint32_t height = 0;
    std::vector<uint8_t> pixels;  // width * height * 3 bytes, row-major RGBRGB...
};

}  // namespace ecso
