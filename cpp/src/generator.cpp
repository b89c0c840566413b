// libsoat's Generator: an export folder's manifest, verified noise and mean styles, and the mapping and styles
// graphs (the tasks are in tasks.cpp).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include "impl.h"

namespace soat {
namespace {

at::Tensor from_npy(const detail::NpyArray& a) {
  return at::from_blob(const_cast<float*>(a.data.data()), a.shape, at::kFloat).clone();
}

std::vector<at::Tensor> load_noise(const detail::Manifest& m, at::Device device, at::ScalarType dtype) {
  auto arrays = detail::read_verified_npz(m, m.noise);
  std::vector<at::Tensor> fixed;
  for (size_t i = 0; i < arrays.size(); ++i) {
    auto it = arrays.find("noise_" + std::to_string(i));
    if (it == arrays.end()) throw Error(m.noise.what + ": '" + m.noise.name + "' has no noise_" + std::to_string(i));
    fixed.push_back(from_npy(it->second).to(device, dtype));
  }
  return fixed;
}

Styles load_mean(const detail::Manifest& m, at::Device device, at::ScalarType dtype) {
  auto arrays = detail::read_verified_npz(m, *m.mean_styles);
  auto it = arrays.find("mean_styles");
  if (it == arrays.end()) throw Error(m.mean_styles->what + ": '" + m.mean_styles->name + "' has no mean_styles");
  return from_npy(it->second).to(device, dtype).split_with_sizes(m.channels, 1);
}

}  // namespace

Generator::Impl::Impl(const std::string& folder, const std::string& asked_device, bool cuda_graphs)
    : manifest(detail::read_manifest(folder)),
      device(detail::check_runtime(manifest, asked_device)),
      dtype(manifest.dtype),
      packages(manifest, device, dtype),
      noise(load_noise(manifest, device, dtype), device, dtype),
      captures(device, dtype, cuda_graphs && device.is_cuda()),
      mean(load_mean(manifest, device, dtype)) {}

Generator::Generator(const std::string& folder, const std::string& device, bool cuda_graphs) {
  c10::InferenceMode guard;
  impl_ = std::make_unique<Impl>(folder, device, cuda_graphs);
}

Generator::~Generator() = default;
Generator::Generator(Generator&&) noexcept = default;
Generator& Generator::operator=(Generator&&) noexcept = default;

int64_t Generator::size() const { return impl_->manifest.size; }
int64_t Generator::style_dim() const { return impl_->manifest.style_dim; }
at::Device Generator::device() const { return impl_->device; }
at::ScalarType Generator::dtype() const { return impl_->dtype; }
const Styles& Generator::mean_styles() const { return impl_->mean; }

at::Tensor Generator::run_graph(const std::string& id, std::vector<at::Tensor> inputs) {
  c10::InferenceMode guard;
  return impl_->run1(id, std::move(inputs));
}

at::Tensor Generator::seed_z(const std::vector<uint64_t>& seeds) const {
  c10::InferenceMode guard;
  std::vector<at::Tensor> rows;
  for (uint64_t s : seeds) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(s);
    rows.push_back(at::randn({1, style_dim()}, gen));
  }
  return at::cat(rows);
}

at::Tensor Generator::w(const at::Tensor& z) {
  c10::InferenceMode guard;
  return impl_->run1("mapping", {z});
}

Styles Generator::styles_from_w(const at::Tensor& w, double truncation) {
  c10::InferenceMode guard;
  const auto& m = impl_->manifest;
  at::Tensor wp = w.dim() == 2 ? w.to(impl_->device, impl_->dtype).unsqueeze(1).repeat({1, m.n_latent, 1}) : w;
  if (wp.dim() != 3 || wp.size(1) != m.n_latent || wp.size(2) != m.style_dim)
    throw Error("w must be [B, 512] or W+ [B, n_latent, 512]");
  Styles s = impl_->run1("styles", {wp}).split_with_sizes(m.channels, 1);
  if (truncation != 1.0)
    for (size_t k = 0; k < s.size(); ++k) s[k] = impl_->mean[k] + truncation * (s[k] - impl_->mean[k]);
  return s;
}

Styles Generator::styles(const at::Tensor& z, double truncation) {
  c10::InferenceMode guard;
  if (z.dim() != 2 || z.size(1) != style_dim()) throw Error("z must be a tensor [B, 512]");
  return styles_from_w(w(z.to(impl_->device, impl_->dtype)), truncation);
}

Styles Generator::pick(const Styles& s, int64_t i) const {
  c10::InferenceMode guard;
  Styles out;
  for (auto& t : s) out.push_back(t.slice(0, i, i + 1));
  return out;
}

}  // namespace soat
