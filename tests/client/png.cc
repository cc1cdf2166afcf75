#include "tests/client/png.h"

#include <zlib.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace sinkscope::testing {
namespace {

uint32_t Be32(const std::string& s, size_t at) {
  return (uint32_t(uint8_t(s[at])) << 24) | (uint32_t(uint8_t(s[at + 1])) << 16) | (uint32_t(uint8_t(s[at + 2])) << 8) |
         uint32_t(uint8_t(s[at + 3]));
}

int Paeth(int a, int b, int c) {
  const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

}  // namespace

Image ReadPng(const std::string& path, std::string* error) {
  Image img;
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string s = ss.str();
  auto fail = [&](const std::string& why) {
    *error = path + ": " + why;
    return Image{};
  };
  if (s.size() < 8 || s.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) return fail("not a PNG");
  int depth = 0, color = 0, interlace = 0;
  std::string idat, palette;
  bool end = false;
  for (size_t at = 8; at + 8 <= s.size();) {
    const uint32_t len = Be32(s, at);
    const std::string type = s.substr(at + 4, 4);
    if (at + 12 + len > s.size()) return fail("truncated chunk " + type);
    const std::string data = s.substr(at + 8, len);
    const uint32_t crc = crc32(crc32(0, nullptr, 0), reinterpret_cast<const Bytef*>(s.data() + at + 4), len + 4);
    if (crc != Be32(s, at + 8 + len)) return fail("bad CRC in " + type);
    if (type == "IHDR") {
      img.width = static_cast<int>(Be32(data, 0));
      img.height = static_cast<int>(Be32(data, 4));
      depth = uint8_t(data[8]);
      color = uint8_t(data[9]);
      interlace = uint8_t(data[12]);
    } else if (type == "PLTE") {
      palette = data;
    } else if (type == "IDAT") {
      idat += data;
    } else if (type == "IEND") {
      end = true;
      break;
    }
    at += 12 + len;
  }
  if (!end) return fail("no IEND");
  if (depth != 8 || interlace != 0) return fail("unsupported depth/interlace");
  const int channels = color == 0 ? 1 : color == 2 ? 3 : color == 3 ? 1 : color == 4 ? 2 : color == 6 ? 4 : 0;
  if (channels == 0) return fail("unsupported colour type");
  const size_t stride = size_t(img.width) * channels;
  std::string raw((stride + 1) * img.height, '\0');
  uLongf raw_len = raw.size();
  if (uncompress(reinterpret_cast<Bytef*>(raw.data()), &raw_len, reinterpret_cast<const Bytef*>(idat.data()),
                 idat.size()) != Z_OK ||
      raw_len != raw.size())
    return fail("bad image data");
  std::vector<uint8_t> prev(stride, 0), cur(stride);
  img.rgb.reserve(size_t(img.width) * img.height);
  for (int y = 0; y < img.height; ++y) {
    const uint8_t* row = reinterpret_cast<const uint8_t*>(raw.data()) + y * (stride + 1);
    const int filter = row[0];
    for (size_t x = 0; x < stride; ++x) {
      const int a = x >= size_t(channels) ? cur[x - channels] : 0, b = prev[x],
                c = x >= size_t(channels) ? prev[x - channels] : 0;
      int v = row[1 + x];
      switch (filter) {
        case 0: break;
        case 1: v += a; break;
        case 2: v += b; break;
        case 3: v += (a + b) / 2; break;
        case 4: v += Paeth(a, b, c); break;
        default: return fail("bad filter");
      }
      cur[x] = uint8_t(v);
    }
    for (int x = 0; x < img.width; ++x) {
      const uint8_t* p = &cur[size_t(x) * channels];
      int r, g, bl, al = 255;
      if (color == 3) {
        if (size_t(p[0]) * 3 + 2 >= palette.size()) return fail("palette index");
        r = uint8_t(palette[p[0] * 3]), g = uint8_t(palette[p[0] * 3 + 1]), bl = uint8_t(palette[p[0] * 3 + 2]);
      } else if (channels <= 2) {
        r = g = bl = p[0];
        if (channels == 2) al = p[1];
      } else {
        r = p[0], g = p[1], bl = p[2];
        if (channels == 4) al = p[3];
      }
      auto over_white = [al](int v) { return (v * al + 255 * (255 - al)) / 255; };
      img.rgb.push_back((uint32_t(over_white(r)) << 16) | (uint32_t(over_white(g)) << 8) | uint32_t(over_white(bl)));
    }
    prev = cur;
  }
  error->clear();
  return img;
}

double InkFraction(const Image& img) {
  if (img.rgb.empty()) return 0;
  std::map<uint32_t, size_t> count;
  for (uint32_t p : img.rgb) ++count[p];
  size_t top = 0;
  for (const auto& [c, n] : count) top = std::max(top, n);
  return 1.0 - double(top) / double(img.rgb.size());
}

size_t DistinctColours(const Image& img) { return std::set<uint32_t>(img.rgb.begin(), img.rgb.end()).size(); }

}  // namespace sinkscope::testing
