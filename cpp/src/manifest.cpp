// manifest.json of an AOTI export folder: parsed and checked into plain data (manifest.h), and the folder's
// files read through their sha256.
#include "manifest.h"

#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <torch/headeronly/version.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include "errors.h"
#include "soat/soat.h"

namespace soat::detail {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// 5: "runs", the plan of every run of layers; 4: linked graphs; 3: channels_last inputs; 2: AOTI graphs
constexpr int kMinVersion = 2, kMaxVersion = 5;
const std::string kLinked = ".linked";  // soat.runtime.graphs.linked_id: a styled conv's linked graph

bool has(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

bool styled_conv(const Node& n) { return n.kind == "conv" || n.kind == "conv_up"; }

json read_json(const Manifest& m) {
  std::ifstream f(m.path);
  if (!f) throw Error("'" + m.folder + "' is not an export folder: it has no manifest.json");
  try {
    json j;
    f >> j;
    return j;
  } catch (const std::exception&) {
    throw Error(m.path + " is not valid JSON; re-export the folder");
  }
}

void read_format(const json& j, Manifest& m) {
  if (j.at("format") != "soat-export") throw Error(m.path + " is not a SOAT export manifest");
  m.version = j.at("format_version");
  if (m.version < kMinVersion)
    throw Error("'" + m.folder + "' holds ONNX graphs; libsoat runs `soat export ... --format aoti`");
  if (m.version > kMaxVersion) throw Error("'" + m.folder + "' has a newer manifest format than this libsoat reads");
}

// A file the manifest lists: a plain name inside the folder, present, with a sha256 in hex
FileRecord file_record(const Manifest& m, const json& r, const std::string& what) {
  FileRecord f{what, r.at("file").get<std::string>(), "", r.at("sha256").get<std::string>()};
  if (f.name.empty() || f.name.find('/') != std::string::npos || f.name[0] == '.')
    throw Error(what + ": file name '" + f.name + "' must be a plain name inside the export folder; re-export it");
  f.path = (fs::path(m.folder) / f.name).string();
  if (!fs::is_regular_file(f.path))
    throw Error(what + ": '" + f.name + "' is missing from export folder '" + m.folder + "'; re-export it");
  std::transform(f.sha256.begin(), f.sha256.end(), f.sha256.begin(), ::tolower);
  if (f.sha256.size() != 64 || f.sha256.find_first_not_of("0123456789abcdef") != std::string::npos)
    throw Error(what + ": its sha256 in " + m.path + " is not a SHA-256 digest; re-export the folder");
  return f;
}

void read_graphs(const json& j, Manifest& m) {
  for (auto& [id, r] : j.at("graphs").items()) {  // format 5's "shapes" is for the Python loaders: not read here
    if (r.at("format") != "aoti")
      throw Error("'" + m.folder + "' holds " + r.at("format").get<std::string>() +
                  " graphs; libsoat runs `soat export ... --format aoti`");
    Graph g{file_record(m, r, "graph '" + id + "'"), r.at("inputs").get<std::vector<std::string>>(),
            r.at("outputs").get<std::vector<std::string>>(), {}};
    auto cl = r.value("channels_last", std::vector<std::string>{});  // format 3; none before
    for (const auto& name : g.inputs) g.channels_last.push_back(has(cl, name));
    m.graphs.emplace(id, std::move(g));
  }
}

void read_chain(const json& j, Manifest& m) {
  for (auto& r : j.at("chain")) {
    Node n;
    n.id = r.at("id");
    n.kind = r.at("kind");
    n.inputs = r.at("inputs").get<std::vector<std::string>>();
    n.style_index = r.at("style_index");
    n.noise_index = r.at("noise_index").is_null() ? -1 : r.at("noise_index").get<int64_t>();
    n.up = r.at("up");
    m.chain.push_back(n);
    m.graph(n.id);  // every node has its graph
  }
  int64_t next = -1;  // walking back: the style of the styled conv after the current node
  for (auto n = m.chain.rbegin(); n != m.chain.rend(); ++n) {
    n->next_style = next;
    if (styled_conv(*n)) next = n->style_index;
  }
}

// "FIRST:LAST": decimal chain indices, 1 <= FIRST < LAST <= chain length (index 0, the constant, runs alone)
std::pair<size_t, size_t> run_key(const Manifest& m, const std::string& key) {
  auto colon = key.find(':');
  auto digits = [](const std::string& s) {
    return !s.empty() && s.size() < 6 && s.find_first_not_of("0123456789") == std::string::npos;
  };
  if (colon != std::string::npos && digits(key.substr(0, colon)) && digits(key.substr(colon + 1))) {
    size_t first = std::stoul(key.substr(0, colon)), last = std::stoul(key.substr(colon + 1));
    if (1 <= first && first < last && last <= m.chain.size()) return {first, last};
  }
  throw Error(m.path + ": run '" + key + "' is not a run of the chain's layers; re-export the folder");
}

// A plan step for chain[node]: its own graph, whose one output the run keeps, or its linked graph, which keeps
// some of x and next_x_mod
Step read_step(const Manifest& m, size_t node, const json& r, const std::string& where) {
  const Node& n = m.chain[node];
  Step s{node, r.at("graph").get<std::string>()};
  s.linked = s.graph == n.id + kLinked;
  if (!s.linked && s.graph != n.id)
    throw Error(where + " runs node '" + n.id + "' by graph '" + s.graph + "'; re-export the folder");
  const Graph& g = m.graph(s.graph);
  auto writes = r.at("writes").get<std::vector<std::string>>();
  if (!s.linked) {
    if (writes != g.outputs) throw Error(where + ": node '" + n.id + "' must keep its output; re-export the folder");
    return s;
  }
  for (const auto& w : writes)
    if ((w != "x" && w != "next_x_mod") || !has(g.outputs, w))
      throw Error(where + ": graph '" + s.graph + "' gives no '" + w + "' to keep; re-export the folder");
  if (has(g.inputs, "next_style") && n.next_style < 0)
    throw Error(where + ": graph '" + s.graph + "' takes a next_style, but no styled conv follows; re-export");
  s.writes_x = has(writes, "x");
  s.writes_x_mod = has(writes, "next_x_mod");
  return s;
}

// The plan's data flow: each step finds what it reads (x, or for a linked graph a held modulated input or x to
// modulate), and the run ends with x, which the tasks read after a run
void check_flow(const Manifest& m, const Plan& plan, const std::string& where) {
  bool x = true, held = false;
  for (const Step& s : plan) {
    const Node& n = m.chain[s.node];
    if (s.linked ? !x && !held : !x && has(n.inputs, "x"))
      throw Error(where + ": node '" + n.id + "' reads features no earlier step kept; re-export the folder");
    if (s.linked) {
      x = s.writes_x;
      held = s.writes_x_mod;
    } else if (n.kind != "to_rgb") {  // a ToRGB leaves the features, and their modulated form, as they are
      x = true;
      held = false;
    }
  }
  if (!x) throw Error(where + " ends without the features; re-export the folder");
}

// Format 5: the exporter's plan of every run; before: every node by its own graph (correct, without the linked
// graphs' saving), since the rule of when a linked graph pays is the exporter's alone
void read_runs(const json& j, Manifest& m) {
  const size_t n = m.chain.size();
  if (m.version < 5) {
    for (size_t first = 1; first < n; ++first)
      for (size_t last = first + 1; last <= n; ++last)
        for (size_t i = first; i < last; ++i) m.runs[{first, last}].push_back(Step{i, m.chain[i].id});
    return;
  }
  for (auto& [key, steps] : j.at("runs").items()) {
    auto range = run_key(m, key);
    const std::string where = m.path + ": run " + key;
    if (steps.size() != range.second - range.first)
      throw Error(where + " must have one step per node; re-export the folder");
    Plan plan;
    for (size_t i = range.first; i < range.second; ++i) plan.push_back(read_step(m, i, steps[i - range.first], where));
    check_flow(m, plan, where);
    m.runs[range] = std::move(plan);
  }
  if (m.runs.size() != n * (n - 1) / 2)
    throw Error(m.path + " lists " + std::to_string(m.runs.size()) + " of the " + std::to_string(n * (n - 1) / 2) +
                " runs of layers; re-export the folder");
}

// The precisions an AOTI export takes (soat.runtime.capabilities.PRECISIONS; tests/test_capabilities.py checks
// the names against that table): a name this libsoat does not know is refused, never read as fp32.
c10::ScalarType parse_dtype(const std::string& name, const Manifest& m) {
  static const std::map<std::string, c10::ScalarType> kDtypes{
      {"fp32", c10::kFloat}, {"fp16", c10::kHalf}, {"bf16", c10::kBFloat16}};
  auto it = kDtypes.find(name);
  if (it == kDtypes.end())
    throw Error(m.path + ": dtype '" + name + "' is not fp32, fp16 or bf16; re-export the folder");
  return it->second;
}

void read_model(const json& j, Manifest& m) {
  m.torch = j.at("exporter").at("torch");
  m.device = j.at("device");
  m.dtype = parse_dtype(j.at("dtype").get<std::string>(), m);
  m.size = j.at("config").at("size");
  m.style_dim = j.at("config").at("style_dim");
  int64_t log_size = 0;
  while ((int64_t{1} << (log_size + 1)) <= m.size) ++log_size;
  m.n_latent = log_size * 2 - 2;
  m.channels = j.at("style_channels").get<std::vector<int64_t>>();
  m.noise = file_record(m, j.at("noise"), "noise buffers");
  if (j.at("mean_styles").is_null()) throw Error("export '" + m.folder + "' has no mean styles; re-export it");
  m.mean_styles = file_record(m, j.at("mean_styles"), "mean styles");
}

std::string sha256_hex(const Bytes& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1)
    throw Error("OpenSSL could not compute a SHA-256 digest");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) out += {hex[md[i] >> 4], hex[md[i] & 15]};
  return out;
}

}  // namespace

const Graph& Manifest::graph(const std::string& id) const {
  auto it = graphs.find(id);
  if (it == graphs.end()) throw Error("graph '" + id + "' is not in export '" + folder + "'");
  return it->second;
}

// [lo, hi) of a span: integers with 0 <= lo < hi <= width
static std::pair<int64_t, int64_t> span_range(const json& r, int64_t width, const std::string& where) {
  auto v = r.get<std::vector<int64_t>>();
  if (v.size() != 2 || v[0] < 0 || v[0] >= v[1] || v[1] > width)
    throw Error(where + " is not a column range of a span; re-export the folder");
  return {v[0], v[1]};
}

static void read_endless(const json& j, Manifest& m) {
  if (m.version < 5) return;
  const json& e = j.at("endless");
  const std::string where = m.path + ": endless";
  Endless g;
  g.span_width = e.at("span_width");
  if (g.span_width != 2 * m.size) throw Error(where + " spans are not twice the image width; re-export the folder");
  std::tie(g.first_lo, g.first_hi) = span_range(e.at("first"), g.span_width, where);
  std::tie(g.lo, g.hi) = span_range(e.at("later"), g.span_width, where);
  m.endless = g;
}

const Plan& Manifest::plan(size_t first, size_t last) const { return runs.at({first, last}); }

Manifest read_manifest(const std::string& folder) {
  Manifest m;
  m.folder = folder;
  m.path = (fs::path(folder) / "manifest.json").string();
  json j = read_json(m);
  try {
    read_format(j, m);
    read_graphs(j, m);
    read_chain(j, m);
    read_runs(j, m);
    read_model(j, m);
    read_endless(j, m);
  } catch (const json::exception& e) {
    throw Error(m.path + " is not a manifest this libsoat reads (" + first_line(e.what()) + "); re-export the folder");
  }
  return m;
}

c10::Device check_runtime(const Manifest& m, const std::string& asked) {
  std::ostringstream mine;
  mine << TORCH_VERSION_MAJOR << "." << TORCH_VERSION_MINOR << "." << TORCH_VERSION_PATCH;
  if (m.torch.substr(0, m.torch.find('+')) != mine.str())
    throw Error("export '" + m.folder + "' was compiled by torch " + m.torch + " but libsoat runs on libtorch " +
                mine.str() + "; AOTI packages load only in the torch that built them: re-export with it");
  c10::Device device(asked.empty() ? m.device : asked);
  if (device.type() != c10::Device(m.device).type())
    throw Error("export '" + m.folder + "' was compiled for device '" + m.device + "' but device '" + asked +
                "' was asked for; re-export with --device " + c10::DeviceTypeName(device.type(), true));
#ifndef SOAT_CUDA
  if (device.is_cuda()) throw Error("this libsoat was built without CUDA; build it against a CUDA libtorch");
#endif
  return device;
}

Bytes read_verified(const Manifest& m, const FileRecord& f) {
  Bytes data;
  try {
    data = read_bytes(f.path);
  } catch (const IoError&) {
    throw Error(f.what + ": '" + f.name + "' is missing from export folder '" + m.folder + "'; re-export it");
  }
  if (sha256_hex(data) != f.sha256)
    throw Error(f.what + ": '" + f.name + "' differs from its sha256 in the manifest: export folder '" + m.folder +
                "' changed since export; re-export it");
  return data;
}

std::map<std::string, NpyArray> read_verified_npz(const Manifest& m, const FileRecord& f) {
  try {
    return parse_npz(f.path, read_verified(m, f));
  } catch (const IoError& e) {
    throw Error(e.what());
  }
}

}  // namespace soat::detail
