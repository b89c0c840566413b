// Internal: files in (whole-file reads, .npz arrays from memory) and PNG out (no libtorch), and the sampler's
// latent values.
#pragma once
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace soat {
std::vector<float> endless_latent_values(uint64_t seed, int64_t index, int64_t dim);
namespace detail {
struct IoError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
using Bytes = std::vector<unsigned char>;
Bytes read_bytes(const std::string& path);                     // the whole file
void write_bytes(const std::string& path, const Bytes& data);  // a new file, readable by this user only
// float32 arrays by name from the bytes of an .npz (np.savez output); `where` names it in errors
std::map<std::string, NpyArray> parse_npz(const std::string& where, const Bytes& buf);
// Written under a temporary name in path's folder, then renamed: a reader sees the old file or the whole new one
void write_png_rgb(const std::string& path, const uint8_t* rgb, int64_t height, int64_t width);
}  // namespace detail
}  // namespace soat
