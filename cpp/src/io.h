// Internal: .npz reading and PNG writing (no libtorch), and the sampler's latent values.
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
std::map<std::string, NpyArray> read_npz(const std::string& path);  // float32 arrays by name
void write_png_rgb(const std::string& path, const uint8_t* rgb, int64_t height, int64_t width);
}  // namespace detail
}  // namespace soat
