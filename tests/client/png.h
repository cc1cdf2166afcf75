// A minimal PNG reader for the figure tests: 8-bit greyscale, RGB, RGBA, grey+alpha or palette images, not
// interlaced (what gnuplot's pngcairo writes). Decodes every pixel, so a truncated or corrupt file fails.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sinkscope::testing {

struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint32_t> rgb;  // 0xRRGGBB per pixel, alpha composited on white
};

// Decodes `path`; empty `error` on success.
Image ReadPng(const std::string& path, std::string* error);
// Fraction of pixels that differ from the most common colour (the background).
double InkFraction(const Image& img);
// Number of distinct colours.
size_t DistinctColours(const Image& img);

}  // namespace sinkscope::testing
