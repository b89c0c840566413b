// libsoat's tasks over the layer chain: the runs of layers (as the manifest plans them), generate, blend,
// merge_extension, expand and the endless panorama's columns (soat.runtime.tasks is the Python twin).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>

#include "impl.h"
#include "io.h"

namespace soat {
namespace {

using detail::Node;

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

Error unknown_input(const std::string& graph, const std::string& name) {
  return Error("graph '" + graph + "' takes an input '" + name + "' that libsoat does not know; re-export the folder");
}

// A noise map (one channel, batch 1 or b) expanded to batch b: the packages take the noise at the batch of x
at::Tensor batch_noise(const at::Tensor& noise, int64_t b) {
  return noise.expand({b, 1, noise.size(2), noise.size(3)});
}

// A node's inputs in its graph's order; the noise (one channel) expanded to the batch of x.
std::vector<at::Tensor> node_inputs(const Node& n, const at::Tensor& x, const Styles& s, const at::Tensor& rgb,
                                    const std::optional<at::Tensor>& noise) {
  std::vector<at::Tensor> in;
  for (auto& name : n.inputs) {
    if (name == "x") in.push_back(x);
    else if (name == "style") in.push_back(s[n.style_index]);
    else if (name == "skip") in.push_back(rgb);
    else if (name == "noise") in.push_back(batch_noise(*noise, x.size(0)));
    else throw unknown_input(n.id, name);
  }
  return in;
}

void check_styles(const Styles& s, const std::vector<int64_t>& channels, const char* name) {
  if (s.size() != channels.size())
    throw Error(std::string(name) + " must hold " + std::to_string(channels.size()) + " sigma tensors");
  for (size_t k = 0; k < s.size(); ++k)
    if (s[k].dim() != 2 || s[k].size(1) != channels[k] || s[k].size(0) != s[0].size(0))
      throw Error(std::string(name) + "[" + std::to_string(k) + "] must be [B, " + std::to_string(channels[k]) + "]");
}

// Both style lists checked: of the layout, and of one batch
void check_pair(const Styles& s1, const Styles& s2, const std::vector<int64_t>& channels) {
  check_styles(s1, channels, "styles1");
  check_styles(s2, channels, "styles2");
  if (s1[0].size(0) != s2[0].size(0))
    throw Error("styles1 has batch " + std::to_string(s1[0].size(0)) + " but styles2 has " +
                std::to_string(s2[0].size(0)) + "; they must match");
}

// sigma1's entries then sigma2's as one list (a graphed task's inputs), and back
std::vector<at::Tensor> joined(const Styles& s1, const Styles& s2) {
  std::vector<at::Tensor> all(s1);
  all.insert(all.end(), s2.begin(), s2.end());
  return all;
}

std::pair<Styles, Styles> halves(const std::vector<at::Tensor>& all) {
  auto mid = all.begin() + static_cast<std::ptrdiff_t>(all.size() / 2);
  return {Styles(all.begin(), mid), Styles(mid, all.end())};
}

// Both style lists as one batch of 2B per entry: sigma1's rows, then sigma2's
Styles paired(const Styles& s1, const Styles& s2) {
  Styles s;
  for (size_t k = 0; k < s1.size(); ++k) s.push_back(at::cat({s1[k], s2[k]}));
  return s;
}

// The noise of a batch-B call for the paired batch of 2B: both runs see the same maps
std::optional<at::Tensor> twice(std::optional<at::Tensor> noise) {
  if (noise && noise->size(0) != 1) noise = at::cat({*noise, *noise});
  return noise;
}

}  // namespace

at::Tensor Generator::Impl::ramp_lerp(const at::Tensor& x1, const at::Tensor& x2, int64_t axis, bool pad) {
  int64_t n = x1.size(axis);
  auto key = std::make_tuple(n, axis, pad);
  auto it = alphas.find(key);
  if (it == alphas.end()) it = alphas.emplace(key, ramp_alpha(n, axis, pad, x1.options())).first;
  const at::Tensor& alpha = it->second;
  return (1 - alpha) * x1 + alpha * x2;
}

// chain[first:last] with one style list, step by step as the manifest's plan says; returns (x, rgb). A plain step
// runs the node's own graph (its output is x, or rgb for a ToRGB, which leaves a held modulated input as it is);
// a linked step runs the styled conv's linked graph (run_linked).
std::pair<at::Tensor, at::Tensor> Generator::Impl::run_layers(size_t first, size_t last, const Styles& s,
                                                              at::Tensor x, at::Tensor rgb, const NoiseFn& noise_of) {
  at::Tensor x_mod;  // the next styled conv's modulated input, once a linked graph kept it
  for (const detail::Step& step : manifest.plan(first, last)) {
    const Node& n = manifest.chain[step.node];
    if (step.linked) {
      run_linked(step, s, x, x_mod, noise_of);
    } else if (n.kind == "to_rgb") {
      rgb = run1(n.id, node_inputs(n, x, s, rgb, noise_of(n, x)));
    } else {
      x = run1(n.id, node_inputs(n, x, s, rgb, noise_of(n, x)));
      x_mod = at::Tensor();
    }
  }
  return {x, rgb};
}

// A styled conv's linked graph: its input modulated (held from the step before, else x times its style, one ATen
// multiply), its style, noise and the next styled conv's style; x and x_mod become the outputs the step keeps
// (undefined for those it does not), so that the next styled conv needs no modulation pass.
void Generator::Impl::run_linked(const detail::Step& step, const Styles& s, at::Tensor& x, at::Tensor& x_mod,
                                 const NoiseFn& noise_of) {
  const Node& n = manifest.chain[step.node];
  const detail::Graph& g = manifest.graph(step.graph);
  const at::Tensor& style = s[n.style_index];
  if (!x_mod.defined()) x_mod = x * style.unsqueeze(2).unsqueeze(3);
  std::vector<at::Tensor> in;
  for (const auto& name : g.inputs) {
    if (name == "x_mod") in.push_back(x_mod);
    else if (name == "style") in.push_back(style);
    else if (name == "noise") in.push_back(batch_noise(*noise_of(n, x_mod), x_mod.size(0)));
    else if (name == "next_style") in.push_back(s[n.next_style]);
    else throw unknown_input(step.graph, name);
  }
  auto out = packages.run(step.graph, in);
  x = x_mod = at::Tensor();
  for (size_t k = 0; k < g.outputs.size() && k < out.size(); ++k) {
    if (g.outputs[k] == "x" && step.writes_x) x = out[k];
    if (g.outputs[k] == "next_x_mod" && step.writes_x_mod) x_mod = out[k];
  }
}

// lerp_chain: every node with both styles on the shared input, outputs combined by the ramp. Both runs go
// into one call of batch 2B (s: paired styles; the input and skip repeated): half the graph calls, which
// matters where each kernel is launched from the host.
at::Tensor Generator::Impl::lerp_chain(size_t first, const Styles& s, at::Tensor x, int64_t axis, bool pad) {
  const int64_t b = x.size(0);
  at::Tensor rgb;
  for (size_t i = first; i < manifest.chain.size(); ++i) {
    const Node& n = manifest.chain[i];
    auto nz = twice(noise.of(n, b, x.size(2), x.size(3), nullptr));
    at::Tensor out = run1(n.id, node_inputs(n, at::cat({x, x}), s, rgb.defined() ? at::cat({rgb, rgb}) : rgb, nz));
    out = ramp_lerp(out.slice(0, 0, b), out.slice(0, b), axis, pad);
    if (n.kind == "to_rgb") rgb = out;
    else x = out;
  }
  return rgb;
}

at::Tensor Generator::generate(const Styles& s) {
  c10::InferenceMode guard;
  auto& m = *impl_;
  check_styles(s, m.manifest.channels, "styles");
  return m.captures.run("generate", s, [&m](const Styles& st) {
    auto noise = [&m](const Node& n, const at::Tensor& x) {
      return m.noise.of(n, x.size(0), x.size(2), x.size(3), nullptr);
    };
    at::Tensor c = m.run1("input", {st[0]});
    return m.run_layers(1, m.manifest.chain.size(), st, c, at::Tensor(), noise).second.clamp(-1, 1);
  });
}

at::Tensor Generator::blend(const Styles& s1, const Styles& s2, bool vertical) {
  c10::InferenceMode guard;
  auto& m = *impl_;
  check_pair(s1, s2, m.manifest.channels);
  return m.captures.run(vertical ? "blend-vertical" : "blend", joined(s1, s2), [&m, vertical](const Styles& all) {
    auto [first, second] = halves(all);
    at::Tensor c = m.run1("input", {first[0]});
    return m.lerp_chain(1, paired(first, second), c, vertical ? 2 : 3, true).clamp(-1, 1);
  });
}

at::Tensor Generator::merge_extension(const Styles& s1, const Styles& s2) {
  c10::InferenceMode guard;
  auto& m = *impl_;
  check_pair(s1, s2, m.manifest.channels);
  return m.captures.run("merge_extension", joined(s1, s2), [&m](const Styles& all) {
    auto [first, second] = halves(all);
    const Styles s = paired(first, second);
    const Node& conv1 = m.manifest.chain[1];
    at::Tensor c = m.run1("input", {first[0]});
    const int64_t b = c.size(0);
    auto n0 = batch_noise(*twice(m.noise.of(conv1, b, c.size(2), c.size(3), nullptr)), 2 * b);
    at::Tensor both = m.run1(conv1.id, {at::cat({c, c}), s[0], n0});
    at::Tensor x = at::cat({both.slice(0, 0, b), both.slice(0, b)}, 3);
    return m.lerp_chain(2, s, x, 3, true).clamp(-1, 1);
  });
}

at::Tensor Generator::expand(const Styles& s, const std::string& mode, std::optional<uint64_t> noise_seed) {
  c10::InferenceMode guard;
  static const std::vector<std::string> modes{"horizontal", "vertical", "reflect", "replicate", "circular", "constant"};
  if (std::find(modes.begin(), modes.end(), mode) == modes.end())
    throw Error("mode '" + mode + "' is not an expand mode; use horizontal, vertical, reflect, replicate, circular "
                "or constant");
  auto& m = *impl_;
  check_styles(s, m.manifest.channels, "styles");
  std::optional<at::Generator> gen;
  if (noise_seed) gen = at::make_generator<at::CPUGeneratorImpl>(*noise_seed);
  auto noise = [&](const Node& n, const at::Tensor& x) {
    return m.noise.of(n, x.size(0), x.size(2), x.size(3), gen ? &*gen : nullptr);
  };
  const auto& chain = m.manifest.chain;
  size_t cut = 0;
  while (cut < chain.size() && chain[cut].id != "to_rgbs.0") ++cut;
  if (cut == chain.size()) throw Error("expand needs a model of 16 px or more");
  ++cut;
  at::Tensor c = m.run1("input", {s[0]});
  auto [x, rgb] = m.run_layers(1, cut, s, c, at::Tensor(), noise);
  x = widen_one(x, mode);
  rgb = widen_one(rgb, mode);
  return m.run_layers(cut, chain.size(), s, x, rgb, noise).second.clamp(-1, 1);
}

at::Tensor endless_latent(uint64_t seed, int64_t index, int64_t dim) {
  auto v = endless_latent_values(seed, index, dim);
  return at::from_blob(v.data(), {1, dim}, at::kFloat).clone();
}

at::Tensor Generator::columns(uint64_t seed, int64_t start, int64_t width, double truncation) {
  c10::InferenceMode guard;
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
  if (!m.manifest.endless)
    throw Error("export '" + m.manifest.folder + "' (manifest format " + std::to_string(m.manifest.version) +
                ") does not record the endless panorama's geometry; re-export it for columns");
  const detail::Endless& g = *m.manifest.endless;  // the columns each span gives, as the exporter wrote them
  const int64_t R = m.manifest.size, head = g.first_hi - g.first_lo, lo = g.lo, hi = g.hi, step = hi - lo;
  at::Tensor out;
  int64_t col = start, stop = start + width, dst = 0, cached_index = -1;
  at::Tensor span;
  while (col < stop) {
    int64_t index, local, end;
    if (col < head) {
      index = 0, local = g.first_lo + col, end = g.first_hi;
    } else {
      index = (col - head) / step + 1, local = lo + (col - head) % step, end = hi;
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

}  // namespace soat
