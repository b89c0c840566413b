// libsoat: the layer chain and the tasks over an AOTI export folder (see include/soat/soat.h).
#include "soat/soat.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/headeronly/version.h>
#ifdef SOAT_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include "io.h"

namespace soat {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct Node {
  std::string id, kind, output;
  std::vector<std::string> inputs;
  int64_t style_index = 0, noise_index = -1, up = 1;
};

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// soat.runtime.graphs: a styled conv's linked graph is "<id>.linked"
const std::string kLinked = ".linked";

bool is_styled_conv(const Node& n) { return n.kind == "conv" || n.kind == "conv_up"; }

at::Tensor from_npy(const detail::NpyArray& a) {
  return at::from_blob(const_cast<float*>(a.data.data()), a.shape, at::kFloat).clone();
}

// soat.triton_kernels.ramp: the alpha ramp [n] in fp32, built as the reference builds it
at::Tensor ramp(int64_t n, bool pad) {
  if (!pad) return at::linspace(0, 1, n);
  at::Tensor alpha = at::zeros({n});
  int64_t p = n / 4;
  if (p) alpha.slice(0, n - p).fill_(1);
  alpha.slice(0, p, n - p).copy_(at::linspace(0, 1, n - 2 * p));
  return alpha;
}

// the ramp shaped to lerp along axis ([1, 1, n, 1] for 2, [1, 1, 1, n] for 3), with like's dtype and device
at::Tensor ramp_alpha(int64_t n, int64_t axis, bool pad, const at::TensorOptions& like) {
  std::vector<int64_t> view = axis == 2 ? std::vector<int64_t>{1, 1, n, 1} : std::vector<int64_t>{1, 1, 1, n};
  return ramp(n, pad).view(view).to(like);
}

at::Tensor widen_one(const at::Tensor& x, const std::string& mode) {
  int64_t h = x.size(2), w = x.size(3);
  if (mode == "horizontal") return at::upsample_nearest2d(x, {h, 2 * w});
  if (mode == "vertical") return at::upsample_nearest2d(x, {2 * h, w});
  return at::pad(x, {w / 2, w / 2, 0, 0}, mode);
}

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

using TaskFn = std::function<at::Tensor(const std::vector<at::Tensor>&)>;

#ifdef SOAT_CUDA
// One task captured for one input signature: the static inputs its graph reads and the output it writes
struct Capture {
  std::vector<at::Tensor> inputs;
  at::cuda::CUDAGraph graph;
  at::Tensor out;
  uint64_t last_used = 0;
};

constexpr size_t kMaxCaptures = 32;  // per Generator, as the Python runtime keeps; the least recently used goes
#endif

}  // namespace

struct Generator::Impl {
  std::string folder;
  at::Device device{at::kCPU};
  at::ScalarType dtype = at::kFloat;
  int64_t size = 0, style_dim = 512, n_latent = 0;
  std::vector<Node> chain;
  std::vector<int64_t> channels;
  std::map<std::string, std::string> files;
  // graph id -> for each input (in the graph's order): read in channels_last (else contiguous)
  std::map<std::string, std::vector<bool>> channels_last;
  std::map<std::string, std::vector<std::string>> outputs;  // graph id -> its output names, in order
  bool linked = false;  // the folder has every styled conv's linked graph (format 4)
  bool cuda_graphs = false;
#ifdef SOAT_CUDA
  std::map<std::string, std::unique_ptr<Capture>> captures;  // "task|shapes" -> its graph
  std::set<std::string> uncapturable;                          // keys whose capture failed: run eagerly
  uint64_t calls = 0;
  // shared by every capture: a Generator is used from one thread, on one stream, so replays never overlap
  at::cuda::MempoolId_t pool{0, 0};
#endif
  std::map<std::string, std::unique_ptr<torch::inductor::AOTIModelPackageLoader>> loaders;
  std::vector<at::Tensor> fixed_noise;
  std::map<std::vector<int64_t>, at::Tensor> widened;  // (index, b, h, w) -> widened fixed noise
  // (n, axis, pad) -> ramp on the device: built once, since a host-to-device copy per node would make
  // the host wait for the GPU at every layer of a blend
  std::map<std::tuple<int64_t, int64_t, bool>, at::Tensor> alphas;
  Styles mean;
  std::map<std::pair<int64_t, int64_t>, Styles> latent_cache;  // (seed, index) at one truncation
  double latent_truncation = -1;
  uint64_t latent_seed = 0;

  at::Tensor ramp_lerp(const at::Tensor& x1, const at::Tensor& x2, int64_t axis, bool pad) {
    int64_t n = x1.size(axis);
    auto key = std::make_tuple(n, axis, pad);
    auto it = alphas.find(key);
    if (it == alphas.end()) it = alphas.emplace(key, ramp_alpha(n, axis, pad, x1.options())).first;
    const at::Tensor& alpha = it->second;
    return (1 - alpha) * x1 + alpha * x2;
  }

  // fn(inputs), replayed from one CUDA graph per (task, input shapes) where graphs are on, so that small batches
  // do not wait on the host launching every layer's kernels (256 px generate, batch 1, on an H200, fused packages:
  // 1.26 ms eager, 0.88 ms graphed). The result is a copy (it outlives the next call). Runs
  // eagerly inside a caller's own capture, and for a shape whose capture failed (said once on stderr).
  at::Tensor graphed(const std::string& task, const std::vector<at::Tensor>& inputs, const TaskFn& fn) {
#ifdef SOAT_CUDA
    if (cuda_graphs) {
      c10::cuda::OptionalCUDAGuard guard;
      if (device.has_index()) guard.set_device(device);
      if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) return fn(inputs);
      std::ostringstream key;
      key << task;
      for (const auto& t : inputs) key << '|' << t.sizes();
      if (uncapturable.count(key.str())) return fn(inputs);
      auto it = captures.find(key.str());
      if (it == captures.end()) {
        auto c = capture(key.str(), inputs, fn);
        if (!c) return fn(inputs);
        if (captures.size() >= kMaxCaptures) drop_least_recent();
        it = captures.emplace(key.str(), std::move(c)).first;
      }
      Capture& c = *it->second;
      c.last_used = ++calls;
      for (size_t i = 0; i < inputs.size(); ++i) c.inputs[i].copy_(inputs[i]);
      c.graph.replay();
      return c.out.clone();
    }
#endif
    return fn(inputs);
  }

#ifdef SOAT_CUDA
  // Two eager runs on a side stream first: they load the packages, fold their constants and fill the noise and
  // ramp caches, none of which may happen inside a capture. Thread-local capture mode: other threads' CUDA calls
  // neither break it nor fail because of it. nullptr (and the key marked) when the capture fails.
  std::unique_ptr<Capture> capture(const std::string& key, const std::vector<at::Tensor>& inputs, const TaskFn& fn) {
    auto c = std::make_unique<Capture>();
    for (const auto& t : inputs) c->inputs.push_back(t.to(device, dtype).clone());
    if (pool.first == 0 && pool.second == 0) pool = at::cuda::graph_pool_handle();
    const c10::DeviceIndex index = device.has_index() ? device.index() : -1;
    c10::cuda::getCurrentCUDAStream(index).synchronize();  // the static inputs are written
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, index);
    c10::cuda::CUDAStreamGuard on_side(side);
    for (int i = 0; i < 2; ++i) fn(c->inputs);
    side.synchronize();
    try {
      c->graph.capture_begin(pool, cudaStreamCaptureModeThreadLocal);
      try {
        c->out = fn(c->inputs);
      } catch (...) {
        try {
          c->graph.capture_end();
        } catch (...) {  // the capture is already invalid: the first error is the one to report
        }
        throw;
      }
      c->graph.capture_end();
    } catch (const std::exception& e) {
      std::cerr << "soat: CUDA graph capture of " << key << " failed (" << first_line(e.what())
                << "); those calls run eagerly\n";
      uncapturable.insert(key);
      return nullptr;
    }
    side.synchronize();
    return c;
  }

  void drop_least_recent() {
    auto oldest = std::min_element(captures.begin(), captures.end(), [](const auto& a, const auto& b) {
      return a.second->last_used < b.second->last_used;
    });
    captures.erase(oldest);
  }
#endif

  // One graph on inputs in its order (moved to the device and dtype, dense in the layout the manifest lists: a
  // package reads its inputs with the strides it was compiled for, and gives wrong numbers for any others);
  // returns its outputs in the manifest's order. Loads the package on first use.
  std::vector<at::Tensor> run(const std::string& id, std::vector<at::Tensor> inputs) {
    auto it = loaders.find(id);
    if (it == loaders.end()) {
      auto file = files.find(id);
      if (file == files.end()) throw Error("graph '" + id + "' is not in export '" + folder + "'");
      try {
        c10::DeviceIndex index = device.is_cuda() && device.has_index() ? device.index() : -1;
        // single-threaded: no CUDA event per run, so that runs can be captured into a CUDA graph (one Generator
        // per thread, as for its caches)
        it = loaders.emplace(id, std::make_unique<torch::inductor::AOTIModelPackageLoader>(file->second, "model",
                                                                                           true, 1, index)).first;
      } catch (const c10::Error& e) {
        throw Error("cannot load package '" + file->second + "': " + first_line(e.what_without_backtrace()));
      }
    }
    const auto& cl = channels_last.at(id);
    for (size_t i = 0; i < inputs.size(); ++i)
      inputs[i] = inputs[i].to(device, dtype).contiguous(i < cl.size() && cl[i] ? at::MemoryFormat::ChannelsLast
                                                                                  : at::MemoryFormat::Contiguous);
    return it->second->run(inputs);
  }

  // the index of the next styled conv after chain[i] (past a ToRGB); chain.size() after the last
  size_t following(size_t i) const {
    size_t f = i + 1;
    while (f < chain.size() && !is_styled_conv(chain[f])) ++f;
    return f;
  }

  // Whether chain[i], in a run that ends before chain[last], runs its linked graph: as the Python backend decides
  // (AotiBackend._links): where its input is already modulated or the run goes on to the next styled conv, unless
  // the run reads an x that the graph does not give (an upsampling conv that ends the run).
  bool links(size_t i, size_t last, bool modulated) const {
    if (!linked || !is_styled_conv(chain[i])) return false;
    const auto& outs = outputs.at(chain[i].id + kLinked);
    bool reads_x = i + 1 == last || chain[i + 1].kind == "to_rgb";
    if (reads_x && std::find(outs.begin(), outs.end(), "x") == outs.end()) return false;
    return modulated || following(i) < last;
  }

  // the noise for a node given its input's batch and size; random: drawn from gen (normal_, layer order)
  std::optional<at::Tensor> noise_for(const Node& n, int64_t b, int64_t h, int64_t w, at::Generator* gen) {
    if (n.noise_index < 0) return std::nullopt;
    h *= n.up;
    w *= n.up;
    if (gen) {  // the CPU generator of `soat expand` (on CUDA drawn on the CPU in fp32, then moved)
      if (device.is_cpu()) return at::empty({b, 1, h, w}, at::TensorOptions().dtype(dtype)).normal_(0, 1, *gen);
      return at::empty({b, 1, h, w}).normal_(0, 1, *gen).to(device, dtype);
    }
    const at::Tensor& t = fixed_noise.at(n.noise_index);
    if (t.size(2) == h && t.size(3) == w && (t.size(0) == 1 || t.size(0) == b)) return t;
    std::vector<int64_t> key{n.noise_index, b, h, w};
    auto it = widened.find(key);
    if (it == widened.end()) it = widened.emplace(key, widen_noise(t, b, h, w)).first;
    return it->second;
  }
};

Generator::Generator(const std::string& folder, const std::string& device, bool cuda_graphs)
    : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.folder = folder;
  fs::path manifest_path = fs::path(folder) / "manifest.json";
  std::ifstream f(manifest_path);
  if (!f) throw Error("'" + folder + "' is not an export folder: it has no manifest.json");
  json j;
  try {
    f >> j;
  } catch (const std::exception& e) {
    throw Error(manifest_path.string() + " is not valid JSON; re-export the folder");
  }
  try {
    if (j.at("format") != "soat-export") throw Error(manifest_path.string() + " is not a SOAT export manifest");
    int version = j.at("format_version");
    if (version < 2) throw Error("'" + folder + "' holds ONNX graphs; libsoat runs `soat export ... --format aoti`");
    if (version > 4) throw Error("'" + folder + "' has a newer manifest format than this libsoat reads");
    for (auto& [id, g] : j.at("graphs").items()) {
      if (g.at("format") != "aoti")
        throw Error("'" + folder + "' holds " + g.at("format").get<std::string>() +
                    " graphs; libsoat runs `soat export ... --format aoti`");
      std::string file = g.at("file");
      if (file.find('/') != std::string::npos || !fs::is_regular_file(fs::path(folder) / file))
        throw Error("graph '" + id + "': '" + file + "' is missing from export folder '" + folder + "'; re-export it");
      m.files[id] = (fs::path(folder) / file).string();
      auto inputs = g.at("inputs").get<std::vector<std::string>>();
      m.outputs[id] = g.at("outputs").get<std::vector<std::string>>();
      auto cl = g.value("channels_last", std::vector<std::string>{});  // format 3; none before
      for (const auto& name : inputs)
        m.channels_last[id].push_back(std::find(cl.begin(), cl.end(), name) != cl.end());
    }
    std::string built = j.at("exporter").at("torch");
    std::ostringstream mine;
    mine << TORCH_VERSION_MAJOR << "." << TORCH_VERSION_MINOR << "." << TORCH_VERSION_PATCH;
    if (built.substr(0, built.find('+')) != mine.str())
      throw Error("export '" + folder + "' was compiled by torch " + built + " but libsoat runs on libtorch " +
                  mine.str() + "; AOTI packages load only in the torch that built them: re-export with it");
    std::string built_device = j.at("device");
    m.device = at::Device(device.empty() ? built_device : device);
    if (m.device.type() != at::Device(built_device).type())
      throw Error("export '" + folder + "' was compiled for device '" + built_device + "' but device '" + device +
                  "' was asked for; re-export with --device " + at::DeviceTypeName(m.device.type(), true));
    m.cuda_graphs = cuda_graphs && m.device.is_cuda();
#ifndef SOAT_CUDA
    if (m.device.is_cuda()) throw Error("this libsoat was built without CUDA; build it against a CUDA libtorch");
#endif
    std::string dt = j.at("dtype");
    m.dtype = dt == "fp16" ? at::kHalf : dt == "bf16" ? at::kBFloat16 : at::kFloat;
    m.size = j.at("config").at("size");
    m.style_dim = j.at("config").at("style_dim");
    int64_t log_size = 0;
    while ((int64_t{1} << (log_size + 1)) <= m.size) ++log_size;
    m.n_latent = log_size * 2 - 2;
    for (auto& r : j.at("chain")) {
      Node n;
      n.id = r.at("id");
      n.kind = r.at("kind");
      n.inputs = r.at("inputs").get<std::vector<std::string>>();
      n.output = r.at("outputs").at(0);
      n.style_index = r.at("style_index");
      n.noise_index = r.at("noise_index").is_null() ? -1 : r.at("noise_index").get<int64_t>();
      n.up = r.at("up");
      m.chain.push_back(n);
    }
    m.linked = std::all_of(m.chain.begin(), m.chain.end(), [&](const Node& n) {
      return !is_styled_conv(n) || m.files.count(n.id + kLinked);
    });
    m.channels = j.at("style_channels").get<std::vector<int64_t>>();
    auto noise = detail::read_npz((fs::path(folder) / j.at("noise").at("file").get<std::string>()).string());
    for (size_t i = 0; i < noise.size(); ++i)
      m.fixed_noise.push_back(from_npy(noise.at("noise_" + std::to_string(i))).to(m.device, m.dtype));
    if (j.at("mean_styles").is_null()) throw Error("export '" + folder + "' has no mean styles; re-export it");
    auto mean = detail::read_npz((fs::path(folder) / j.at("mean_styles").at("file").get<std::string>()).string());
    at::Tensor flat = from_npy(mean.at("mean_styles")).to(m.device, m.dtype);
    m.mean = flat.split_with_sizes(m.channels, 1);
  } catch (const json::exception& e) {
    throw Error(manifest_path.string() + " is not a manifest this libsoat reads (" + first_line(e.what()) +
                "); re-export the folder");
  } catch (const detail::IoError& e) {
    throw Error(e.what());
  }
}

Generator::~Generator() = default;
Generator::Generator(Generator&&) noexcept = default;
Generator& Generator::operator=(Generator&&) noexcept = default;

int64_t Generator::size() const { return impl_->size; }
int64_t Generator::style_dim() const { return impl_->style_dim; }
at::Device Generator::device() const { return impl_->device; }
at::ScalarType Generator::dtype() const { return impl_->dtype; }
const Styles& Generator::mean_styles() const { return impl_->mean; }

at::Tensor Generator::run_graph(const std::string& id, std::vector<at::Tensor> inputs) {
  return impl_->run(id, std::move(inputs)).at(0);
}

at::Tensor Generator::seed_z(const std::vector<uint64_t>& seeds) const {
  std::vector<at::Tensor> rows;
  for (uint64_t s : seeds) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(s);
    rows.push_back(at::randn({1, impl_->style_dim}, gen));
  }
  return at::cat(rows);
}

at::Tensor Generator::w(const at::Tensor& z) { return run_graph("mapping", {z}); }

Styles Generator::styles_from_w(const at::Tensor& w, double truncation) {
  at::Tensor wp = w.dim() == 2 ? w.to(impl_->device, impl_->dtype).unsqueeze(1).repeat({1, impl_->n_latent, 1}) : w;
  if (wp.dim() != 3 || wp.size(1) != impl_->n_latent || wp.size(2) != impl_->style_dim)
    throw Error("w must be [B, 512] or W+ [B, n_latent, 512]");
  Styles s = run_graph("styles", {wp}).split_with_sizes(impl_->channels, 1);
  if (truncation != 1.0)
    for (size_t k = 0; k < s.size(); ++k) s[k] = impl_->mean[k] + truncation * (s[k] - impl_->mean[k]);
  return s;
}

Styles Generator::styles(const at::Tensor& z, double truncation) {
  if (z.dim() != 2 || z.size(1) != impl_->style_dim) throw Error("z must be a tensor [B, 512]");
  return styles_from_w(w(z.to(impl_->device, impl_->dtype)), truncation);
}

Styles Generator::pick(const Styles& s, int64_t i) const {
  Styles out;
  for (auto& t : s) out.push_back(t.slice(0, i, i + 1));
  return out;
}

namespace {

void check_styles(const Styles& s, const std::vector<int64_t>& channels, const char* name) {
  if (s.size() != channels.size())
    throw Error(std::string(name) + " must hold " + std::to_string(channels.size()) + " sigma tensors");
  for (size_t k = 0; k < s.size(); ++k)
    if (s[k].dim() != 2 || s[k].size(1) != channels[k] || s[k].size(0) != s[0].size(0))
      throw Error(std::string(name) + "[" + std::to_string(k) + "] must be [B, " + std::to_string(channels[k]) + "]");
}

}  // namespace

// A noise map (one channel, batch 1 or b) expanded to batch b: the packages take the noise at the batch of x
static at::Tensor batch_noise(const at::Tensor& noise, int64_t b) {
  return noise.expand({b, 1, noise.size(2), noise.size(3)});
}

// A node's inputs in its graph's order; the noise (one channel) expanded to the batch of x.
static std::vector<at::Tensor> node_inputs(const Node& n, const at::Tensor& x, const Styles& s, const at::Tensor& rgb,
                                           const std::optional<at::Tensor>& noise) {
  std::vector<at::Tensor> in;
  for (auto& name : n.inputs) {
    if (name == "x") in.push_back(x);
    else if (name == "style") in.push_back(s[n.style_index]);
    else if (name == "skip") in.push_back(rgb);
    else in.push_back(batch_noise(*noise, x.size(0)));
  }
  return in;
}

// The chain from `first` to `last` (exclusive) with one style list; returns (x, rgb). Styled convs go through
// their linked graphs where Impl::links says so: the first one's input modulated by one ATen multiply, each
// handing the next its modulated input (no modulation pass between layers), as in the Python backend.
using NoiseFn = std::function<std::optional<at::Tensor>(const Node&, const at::Tensor&)>;
static std::pair<at::Tensor, at::Tensor> run_nodes(Generator& G, Generator::Impl& m, size_t first, size_t last,
                                                   const Styles& s, at::Tensor x, at::Tensor rgb,
                                                   const NoiseFn& noise) {
  at::Tensor x_mod;  // the next styled conv's modulated input, once a linked graph gave it
  for (size_t i = first; i < last; ++i) {
    const Node& n = m.chain[i];
    if (m.links(i, last, x_mod.defined())) {
      const at::Tensor& style = s[n.style_index];
      if (!x_mod.defined()) x_mod = x * style.unsqueeze(2).unsqueeze(3);
      std::vector<at::Tensor> in{x_mod, style, batch_noise(*noise(n, x_mod), x_mod.size(0))};
      size_t f = m.following(i);
      if (f < m.chain.size()) in.push_back(s[m.chain[f].style_index]);  // unread where the run ends first
      const std::string id = n.id + kLinked;
      auto out = m.run(id, in);
      const auto& names = m.outputs.at(id);
      x = x_mod = at::Tensor();
      for (size_t k = 0; k < names.size(); ++k) (names[k] == "x" ? x : x_mod) = out[k];
      continue;
    }
    at::Tensor out = G.run_graph(n.id, node_inputs(n, x, s, rgb, noise(n, x)));
    if (n.kind == "to_rgb") {
      rgb = out;
    } else {
      x = out;
      x_mod = at::Tensor();
    }
  }
  return {x, rgb};
}

at::Tensor Generator::generate(const Styles& s) {
  check_styles(s, impl_->channels, "styles");
  return impl_->graphed("generate", s, [this](const Styles& st) {
    auto noise = [&](const Node& n, const at::Tensor& x) {
      return impl_->noise_for(n, x.size(0), x.size(2), x.size(3), nullptr);
    };
    at::Tensor c = run_graph("input", {st[0]});
    return run_nodes(*this, *impl_, 1, impl_->chain.size(), st, c, at::Tensor(), noise).second.clamp(-1, 1);
  });
}

// Both style lists checked: of the layout, and of one batch
static void check_pair(const Styles& s1, const Styles& s2, const std::vector<int64_t>& channels) {
  check_styles(s1, channels, "styles1");
  check_styles(s2, channels, "styles2");
  if (s1[0].size(0) != s2[0].size(0))
    throw Error("styles1 has batch " + std::to_string(s1[0].size(0)) + " but styles2 has " +
                std::to_string(s2[0].size(0)) + "; they must match");
}

// sigma1's entries then sigma2's as one list (a graphed task's inputs), and back
static std::vector<at::Tensor> joined(const Styles& s1, const Styles& s2) {
  std::vector<at::Tensor> all(s1);
  all.insert(all.end(), s2.begin(), s2.end());
  return all;
}

static std::pair<Styles, Styles> halves(const std::vector<at::Tensor>& all) {
  auto mid = all.begin() + static_cast<std::ptrdiff_t>(all.size() / 2);
  return {Styles(all.begin(), mid), Styles(mid, all.end())};
}

// Both style lists as one batch of 2B per entry: sigma1's rows, then sigma2's
static Styles paired(const Styles& s1, const Styles& s2) {
  Styles s;
  for (size_t k = 0; k < s1.size(); ++k) s.push_back(at::cat({s1[k], s2[k]}));
  return s;
}

// The noise of a batch-B call for the paired batch of 2B: both runs see the same maps
static std::optional<at::Tensor> twice(std::optional<at::Tensor> noise) {
  if (noise && noise->size(0) != 1) noise = at::cat({*noise, *noise});
  return noise;
}

// lerp_chain: every node with both styles on the shared input, outputs combined by the ramp. Both runs go
// into one call of batch 2B (s: paired styles; the input and skip repeated): half the graph calls, which
// matters where each kernel is launched from the host.
static at::Tensor lerp_chain(Generator& G, Generator::Impl& m, size_t first, const Styles& s, at::Tensor x,
                             int64_t axis, bool pad) {
  const int64_t b = x.size(0);
  at::Tensor rgb;
  for (size_t i = first; i < m.chain.size(); ++i) {
    const Node& n = m.chain[i];
    auto nz = twice(m.noise_for(n, b, x.size(2), x.size(3), nullptr));
    at::Tensor out = G.run_graph(n.id, node_inputs(n, at::cat({x, x}), s, rgb.defined() ? at::cat({rgb, rgb}) : rgb,
                                                   nz));
    out = m.ramp_lerp(out.slice(0, 0, b), out.slice(0, b), axis, pad);
    if (n.kind == "to_rgb") rgb = out;
    else x = out;
  }
  return rgb;
}

at::Tensor Generator::blend(const Styles& s1, const Styles& s2, bool vertical) {
  check_pair(s1, s2, impl_->channels);
  return impl_->graphed(vertical ? "blend-vertical" : "blend", joined(s1, s2), [this, vertical](const Styles& all) {
    auto [first, second] = halves(all);
    at::Tensor c = run_graph("input", {first[0]});
    return lerp_chain(*this, *impl_, 1, paired(first, second), c, vertical ? 2 : 3, true).clamp(-1, 1);
  });
}

at::Tensor Generator::merge_extension(const Styles& s1, const Styles& s2) {
  check_pair(s1, s2, impl_->channels);
  return impl_->graphed("merge_extension", joined(s1, s2), [this](const Styles& all) {
    auto [first, second] = halves(all);
    const Styles s = paired(first, second);
    auto& m = *impl_;
    const Node& conv1 = m.chain[1];
    at::Tensor c = run_graph("input", {first[0]});
    const int64_t b = c.size(0);
    auto n0 = batch_noise(*twice(m.noise_for(conv1, b, c.size(2), c.size(3), nullptr)), 2 * b);
    at::Tensor both = run_graph(conv1.id, {at::cat({c, c}), s[0], n0});
    at::Tensor x = at::cat({both.slice(0, 0, b), both.slice(0, b)}, 3);
    return lerp_chain(*this, m, 2, s, x, 3, true).clamp(-1, 1);
  });
}

at::Tensor Generator::expand(const Styles& s, const std::string& mode, std::optional<uint64_t> noise_seed) {
  static const std::vector<std::string> modes{"horizontal", "vertical", "reflect", "replicate", "circular", "constant"};
  if (std::find(modes.begin(), modes.end(), mode) == modes.end())
    throw Error("mode '" + mode + "' is not an expand mode; use horizontal, vertical, reflect, replicate, circular "
                "or constant");
  check_styles(s, impl_->channels, "styles");
  auto& m = *impl_;
  std::optional<at::Generator> gen;
  if (noise_seed) gen = at::make_generator<at::CPUGeneratorImpl>(*noise_seed);
  auto noise = [&](const Node& n, const at::Tensor& x) {
    return m.noise_for(n, x.size(0), x.size(2), x.size(3), gen ? &*gen : nullptr);
  };
  size_t cut = 0;
  while (cut < m.chain.size() && m.chain[cut].id != "to_rgbs.0") ++cut;
  if (cut == m.chain.size()) throw Error("expand needs a model of 16 px or more");
  ++cut;
  at::Tensor c = run_graph("input", {s[0]});
  auto [x, rgb] = run_nodes(*this, m, 1, cut, s, c, at::Tensor(), noise);
  x = widen_one(x, mode);
  rgb = widen_one(rgb, mode);
  return run_nodes(*this, m, cut, m.chain.size(), s, x, rgb, noise).second.clamp(-1, 1);
}

at::Tensor endless_latent(uint64_t seed, int64_t index, int64_t dim) {
  auto v = endless_latent_values(seed, index, dim);
  return at::from_blob(v.data(), {1, dim}, at::kFloat).clone();
}

at::Tensor Generator::columns(uint64_t seed, int64_t start, int64_t width, double truncation) {
  if (start < 0) throw Error("start=" + std::to_string(start) + " is out of range; allowed: 0 <= start");
  if (width < 1) throw Error("width=" + std::to_string(width) + " is out of range; allowed: 1 <= width");
  auto& m = *impl_;
  if (m.latent_truncation != truncation || m.latent_seed != seed) {
    m.latent_cache.clear();
    m.latent_truncation = truncation;
    m.latent_seed = seed;
  }
  auto latent = [&](int64_t i) -> const Styles& {
    auto key = std::make_pair(static_cast<int64_t>(seed), i);
    auto it = m.latent_cache.find(key);
    if (it == m.latent_cache.end()) it = m.latent_cache.emplace(key, styles(endless_latent(seed, i), truncation)).first;
    return it->second;
  };
  // panorama_geometry: span 0 gives [0, R + p), later spans [p, 2R - p); p = 2R // 4
  const int64_t R = m.size, p = 2 * R / 4, head_hi = R + p, lo = p, hi = 2 * R - p, step = hi - lo;
  at::Tensor out;
  int64_t col = start, stop = start + width, dst = 0, cached_index = -1;
  at::Tensor span;
  while (col < stop) {
    int64_t index, local, end;
    if (col < head_hi) {
      index = 0, local = col, end = head_hi;
    } else {
      index = (col - head_hi) / step + 1, local = lo + (col - head_hi) % step, end = hi;
    }
    int64_t n = std::min(stop - col, end - local);
    if (index != cached_index) {
      span = merge_extension(latent(index), latent(index + 1));
      cached_index = index;
      if (m.latent_cache.size() > 8) {  // keep the window: latents index and index + 1 only
        for (auto it = m.latent_cache.begin(); it != m.latent_cache.end();)
          it = it->first.second < index ? m.latent_cache.erase(it) : std::next(it);
      }
    }
    if (!out.defined()) out = at::empty({1, 3, R, width}, span.options());
    out.slice(3, dst, dst + n).copy_(span.slice(3, local, local + n));
    dst += n;
    col += n;
  }
  return out;
}

at::Tensor to_uint8(const at::Tensor& images) {
  at::Tensor x = (images.detach().to(at::kCPU, at::kFloat).clamp(-1, 1) + 1) / 2;
  return at::floor(x * 255 + 0.5).clamp(0, 255).to(at::kByte).permute({0, 2, 3, 1}).contiguous();
}

void save_png(const at::Tensor& image, const std::string& path) {
  if (image.dim() != 4 || image.size(0) != 1 || image.size(1) != 3) throw Error("save_png takes one [1, 3, H, W] image");
  at::Tensor px = to_uint8(image);
  try {
    detail::write_png_rgb(path, px.data_ptr<uint8_t>(), px.size(1), px.size(2));
  } catch (const detail::IoError& e) {
    throw Error(e.what());
  }
}

}  // namespace soat
