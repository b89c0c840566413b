// Internal: each styled conv's noise map: the export's fixed noise (widened as the reference widens it where a
// task widened the features) or random draws.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "manifest.h"

namespace soat::detail {

class Noise {
 public:
  Noise(std::vector<at::Tensor> fixed, c10::Device device, c10::ScalarType dtype);
  // The noise of node n for an input of batch b and size h x w (none for a node without noise); gen: random
  // noise drawn from it (normal_, in layer order), else the fixed maps
  std::optional<at::Tensor> of(const Node& n, int64_t b, int64_t h, int64_t w, at::Generator* gen);

 private:
  std::vector<at::Tensor> fixed_;                       // on the device, in the export's dtype
  std::map<std::vector<int64_t>, at::Tensor> widened_;  // (index, b, h, w) -> widened fixed noise
  c10::Device device_;
  c10::ScalarType dtype_;
};

}  // namespace soat::detail
