// Internal: what a Generator holds (include/soat/soat.h keeps it opaque). generator.cpp builds it; tasks.cpp
// holds the runs of layers and the tasks.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "capture.h"
#include "manifest.h"
#include "noise.h"
#include "packages.h"
#include "soat/soat.h"

namespace soat {

// a node's noise for its input x
using NoiseFn = std::function<std::optional<at::Tensor>(const detail::Node&, const at::Tensor&)>;

struct Generator::Impl {
  Impl(const std::string& folder, const std::string& asked_device, bool cuda_graphs);

  const detail::Manifest manifest;
  const at::Device device;
  const at::ScalarType dtype;
  detail::Packages packages;
  detail::Noise noise;
  detail::Captures captures;
  const Styles mean;
  // (n, axis, pad) -> ramp on the device: built once, since a host-to-device copy per node would make the host
  // wait for the GPU at every layer of a blend
  std::map<std::tuple<int64_t, int64_t, bool>, at::Tensor> alphas;
  std::map<std::pair<int64_t, int64_t>, Styles> latent_cache;  // (seed, index) at one truncation
  double latent_truncation = -1;
  uint64_t latent_seed = 0;

  at::Tensor run1(const std::string& id, std::vector<at::Tensor> inputs) {  // a graph's first output
    return packages.run(id, std::move(inputs)).at(0);
  }

  // tasks.cpp
  std::pair<at::Tensor, at::Tensor> run_layers(size_t first, size_t last, const Styles& s, at::Tensor x,
                                               at::Tensor rgb, const NoiseFn& noise_of);
  void run_linked(const detail::Step& step, const Styles& s, at::Tensor& x, at::Tensor& x_mod,
                  const NoiseFn& noise_of);
  at::Tensor lerp_chain(size_t first, const Styles& s, at::Tensor x, int64_t axis, bool pad);
  at::Tensor ramp_lerp(const at::Tensor& x1, const at::Tensor& x2, int64_t axis, bool pad);
};

}  // namespace soat
