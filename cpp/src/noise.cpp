// The styled convs' noise maps (soat.runtime.noise is the Python twin).
#include "noise.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "soat/soat.h"

namespace soat::detail {
namespace {

// src widened along dim (3: width, 2: height) to n: normals from a CPU generator seeded with n, then src copied
// into the first and the last columns (rows)
at::Tensor widen_axis(const at::Tensor& src, int64_t batch, int64_t dim, int64_t n) {
  std::vector<int64_t> sizes = src.sizes().vec();
  int64_t old = sizes[dim];
  sizes[0] = batch;
  sizes[dim] = n;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(n));
  at::Tensor out = at::zeros(sizes).normal_(0, 1, gen);
  out.slice(dim, 0, old).copy_(src);
  out.slice(dim, n - old).copy_(src);
  return out;
}

// soat.runtime.noise.widen_noise: the reference's rule for a noise map narrower than the layer output
at::Tensor widen_noise(const at::Tensor& noise, int64_t batch, int64_t height, int64_t width) {
  int64_t nb = noise.size(0), nh = noise.size(2), nw = noise.size(3);
  if (nw > width || nh > height || (nb != 1 && nb != batch)) throw Error("noise does not fit the layer output");
  at::Tensor src = noise.to(at::kCPU, at::kFloat);
  if (nw != width) src = widen_axis(src, batch, 3, width);
  if (nh != height) src = widen_axis(src, batch, 2, height);
  return src.to(noise.device(), noise.scalar_type());
}

}  // namespace

Noise::Noise(std::vector<at::Tensor> fixed, c10::Device device, c10::ScalarType dtype)
    : fixed_(std::move(fixed)), device_(device), dtype_(dtype) {}

std::optional<at::Tensor> Noise::of(const Node& n, int64_t b, int64_t h, int64_t w, at::Generator* gen) {
  if (n.noise_index < 0) return std::nullopt;
  h *= n.up;
  w *= n.up;
  if (gen) {  // the CPU generator of `soat expand` (on CUDA drawn on the CPU in fp32, then moved)
    if (device_.is_cpu()) return at::empty({b, 1, h, w}, at::TensorOptions().dtype(dtype_)).normal_(0, 1, *gen);
    return at::empty({b, 1, h, w}).normal_(0, 1, *gen).to(device_, dtype_);
  }
  const at::Tensor& t = fixed_.at(n.noise_index);
  if (t.size(2) == h && t.size(3) == w && (t.size(0) == 1 || t.size(0) == b)) return t;
  std::vector<int64_t> key{n.noise_index, b, h, w};
  auto it = widened_.find(key);
  if (it == widened_.end()) it = widened_.emplace(key, widen_noise(t, b, h, w)).first;
  return it->second;
}

}  // namespace soat::detail
