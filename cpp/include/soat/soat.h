// libsoat: run a SOAT AOTInductor export folder (`soat export CKPT -o DIR --format aoti`) from C++.
//
//   soat::Generator G("export_dir");                  // manifest, per-graph .pt2 packages, noise, mean styles
//   auto s = G.styles(G.seed_z({7}), 0.7);             // z (as `soat generate --seeds 7`) -> sigma list, truncated
//   soat::save_png(G.generate(s), "out.png");         // [B, 3, R, R] in [-1, 1]
//
// A whole service around these lines (its CMakeLists.txt and main.cpp, which tests/test_cpp.py builds against the
// installed package): README.md, "C++ embedding".
//
// Tasks: generate, blend (horizontal/vertical), merge_extension, expand and the endless panorama's
// columns(seed, start, width); the feature ops between graphs are ATen calls, and runs of layers go as the
// manifest's plan says (format 5: consecutive styled convs through the export's linked graphs, no modulation
// pass between them; older folders node by node). Every failure throws soat::Error with a one-line message.
// Packages load only in the libtorch version (and on the device type) that built them; the constructor checks
// both against the manifest. Every file is read once, checked against its sha256 in the manifest, and only
// those bytes are used (packages load lazily, on first use): a folder changed after construction gives the
// first model's images or a soat::Error, never a mix. Calls run in c10::InferenceMode, so the tensors they
// return are inference tensors. On CUDA, generate, blend and merge_extension (and so columns) replay one CUDA
// graph per task and input shapes, captured on the first call of each (at most 32 kept, the least recently
// used dropped). A Generator is not thread-safe: one per thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace soat {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

using Styles = std::vector<at::Tensor>;  // sigma list: one [B, C_k] tensor per styled node

class Generator {
 public:
  // device: "" (the manifest's device), "cpu" or "cuda[:i]"; cuda_graphs: replay tasks from CUDA graphs on CUDA.
  explicit Generator(const std::string& folder, const std::string& device = "", bool cuda_graphs = true);
  ~Generator();
  Generator(Generator&&) noexcept;
  Generator& operator=(Generator&&) noexcept;

  int64_t size() const;
  int64_t style_dim() const;
  at::Device device() const;
  at::ScalarType dtype() const;

  at::Tensor seed_z(const std::vector<uint64_t>& seeds) const;  // [N, 512]: torch.randn per seed, CPU generator
  at::Tensor w(const at::Tensor& z);                            // mapping: [B, 512] -> [B, 512]
  Styles styles_from_w(const at::Tensor& w, double truncation = 1.0);  // [B, 512] or W+ [B, n_latent, 512]
  Styles styles(const at::Tensor& z, double truncation = 1.0);  // truncation in sigma space, stored mean styles
  const Styles& mean_styles() const;
  Styles pick(const Styles& s, int64_t i) const;  // entry i as a batch of one

  at::Tensor generate(const Styles& s);                                    // [B, 3, R, R]
  at::Tensor blend(const Styles& s1, const Styles& s2, bool vertical = false);  // [B, 3, R, R]
  at::Tensor merge_extension(const Styles& s1, const Styles& s2);         // [B, 3, R, 2R]
  // mode: horizontal | vertical | reflect | replicate | circular | constant; noise_seed: random noise drawn
  // as torch.manual_seed(seed) then the layers' normal_() (soat expand; on CUDA drawn on the CPU, so not the
  // Python runtime's CUDA draws); none: the fixed noise.
  at::Tensor expand(const Styles& s, const std::string& mode = "reflect",
                    std::optional<uint64_t> noise_seed = std::nullopt);
  // columns [start, start + width) of the endless panorama of seed: [1, 3, R, width] (G.panorama_columns).
  at::Tensor columns(uint64_t seed, int64_t start, int64_t width, double truncation = 0.7);

  // One graph of the export on named-order inputs (graph_io order); returns its one output.
  at::Tensor run_graph(const std::string& id, std::vector<at::Tensor> inputs);

 private:
  struct Impl;  // cpp/src/impl.h
  std::unique_ptr<Impl> impl_;
};

// The endless panorama's latent `index` of `seed`: [1, 512] float32, as soat's NumPy sampler
// (Philox4x64-10 keyed by (seed, index), ziggurat normals, Gaussian smoothing, fixed normaliser).
at::Tensor endless_latent(uint64_t seed, int64_t index, int64_t dim = 512);
// One raw (unsmoothed) latent: `dim` float64 normals, numpy's Generator(Philox(key=seed, counter=j << 128)).
std::vector<double> raw_latent(uint64_t seed, int64_t j, int64_t dim = 512);

at::Tensor to_uint8(const at::Tensor& images);  // [B, 3, H, W] in [-1, 1] -> [B, H, W, 3] uint8 (round half up)
// A batch of one to path (which must end in .png), written under a temporary name in its folder and renamed; an
// image with NaN or infinite values is refused (it would be saved as black).
void save_png(const at::Tensor& image, const std::string& path);
void check_png_path(const std::string& path);  // throws unless path ends in .png (what save_png writes)

}  // namespace soat
