// Internal: manifest.json of an AOTI export folder as plain data, checked before anything is loaded, and the
// folder's files read only through their manifest sha256 (soat.runtime.manifest is the Python reader).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "io.h"

namespace soat::detail {

// One node of the layer chain (the manifest's "chain" record)
struct Node {
  std::string id, kind;
  std::vector<std::string> inputs;
  int64_t style_index = 0, noise_index = -1, up = 1;
  // the style index of the next styled conv after this node (past a ToRGB), -1 after the last: a linked graph's
  // next_style
  int64_t next_style = -1;
};

// A file of the folder and the sha256 the exporter wrote for it; `what` names it in errors ("graph 'convs.0'")
struct FileRecord {
  std::string what, name, path, sha256;
};

struct Graph {
  FileRecord file;
  std::vector<std::string> inputs, outputs;  // names, in the graph's order
  std::vector<bool> channels_last;           // per input: read in channels_last (else contiguous)
};

// One node of a run of layers: chain[node] by its own graph, or (linked) by its linked graph, which keeps x and
// the next styled conv's modulated input where the plan says so
struct Step {
  size_t node = 0;
  std::string graph;
  bool linked = false, writes_x = true, writes_x_mod = false;
};
using Plan = std::vector<Step>;

// The endless panorama's geometry (format 5's "endless", from soat.runtime.tasks.panorama_geometry): spans are
// span_width columns wide; span 0 gives its columns [first_lo, first_hi), every later span [lo, hi)
struct Endless {
  int64_t span_width = 0, first_lo = 0, first_hi = 0, lo = 0, hi = 0;
};

struct Manifest {
  std::string folder, path;  // the folder and its manifest.json
  int version = 0;
  std::string torch, device;  // what compiled the packages, and for which device
  c10::ScalarType dtype = c10::kFloat;
  int64_t size = 0, style_dim = 512, n_latent = 0;
  std::vector<Node> chain;
  std::vector<int64_t> channels;  // sigma entry lengths
  std::map<std::string, Graph> graphs;
  // (first, last) -> how chain[first:last] runs: the manifest's "runs" (format 5), else every node by its own graph
  std::map<std::pair<size_t, size_t>, Plan> runs;
  FileRecord noise;
  std::optional<FileRecord> mean_styles;
  std::optional<Endless> endless;  // format 5 on

  const Graph& graph(const std::string& id) const;
  const Plan& plan(size_t first, size_t last) const;
};

Manifest read_manifest(const std::string& folder);  // throws soat::Error naming the problem and the fix
// The device to run on ("" for the manifest's), refused where the packages cannot load: another libtorch version
// or device type
c10::Device check_runtime(const Manifest& m, const std::string& asked);
// The file's bytes, refused (soat::Error) unless their sha256 is the manifest's: the only way libsoat reads the folder
Bytes read_verified(const Manifest& m, const FileRecord& f);
std::map<std::string, NpyArray> read_verified_npz(const Manifest& m, const FileRecord& f);

}  // namespace soat::detail
