// CUDA-graph capture and replay of whole tasks, the least recently used dropped (compiled with SOAT_CUDA only).
#include "capture.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <iostream>
#include <sstream>

#include "errors.h"

namespace soat::detail {

namespace {
constexpr size_t kMaxCaptures = 32;  // per Generator, as the Python runtime keeps; the least recently used goes
}  // namespace

// One task captured for one input signature: the static inputs its graph reads and the output it writes
struct Captures::Capture {
  std::vector<at::Tensor> inputs;
  at::cuda::CUDAGraph graph;
  at::Tensor out;
  uint64_t last_used = 0;
};

Captures::Captures(c10::Device device, c10::ScalarType dtype, bool on) : device_(device), dtype_(dtype), on_(on) {}

Captures::~Captures() = default;

// Replayed from one CUDA graph per (task, input shapes) where graphs are on, so that small batches do not wait on
// the host launching every layer's kernels (256 px generate, batch 1, on an H200, fused packages: 1.26 ms eager,
// 0.88 ms graphed). The result is a copy (it outlives the next call). Runs eagerly inside a caller's own capture,
// and for a shape whose capture failed (said once on stderr).
at::Tensor Captures::run(const std::string& task, const std::vector<at::Tensor>& inputs, const TaskFn& fn) {
  if (!on_) return fn(inputs);
  c10::cuda::OptionalCUDAGuard guard;
  if (device_.has_index()) guard.set_device(device_);
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) return fn(inputs);
  std::ostringstream key;
  key << task;
  for (const auto& t : inputs) key << '|' << t.sizes();
  if (uncapturable_.count(key.str())) return fn(inputs);
  auto it = captures_.find(key.str());
  if (it == captures_.end()) {
    auto c = capture(key.str(), inputs, fn);
    if (!c) return fn(inputs);
    if (captures_.size() >= kMaxCaptures) drop_least_recent();
    it = captures_.emplace(key.str(), std::move(c)).first;
  }
  Capture& c = *it->second;
  c.last_used = ++calls_;
  for (size_t i = 0; i < inputs.size(); ++i) c.inputs[i].copy_(inputs[i]);
  c.graph.replay();
  return c.out.clone();
}

// Two eager runs on a side stream first: they load the packages, fold their constants and fill the noise and
// ramp caches, none of which may happen inside a capture. Thread-local capture mode: other threads' CUDA calls
// neither break it nor fail because of it. nullptr (and the key marked) when the capture fails.
std::unique_ptr<Captures::Capture> Captures::capture(const std::string& key, const std::vector<at::Tensor>& inputs,
                                                     const TaskFn& fn) {
  auto c = std::make_unique<Capture>();
  for (const auto& t : inputs) c->inputs.push_back(t.to(device_, dtype_).clone());
  if (pool_.first == 0 && pool_.second == 0) pool_ = at::cuda::graph_pool_handle();
  const c10::DeviceIndex index = device_.has_index() ? device_.index() : -1;
  c10::cuda::getCurrentCUDAStream(index).synchronize();  // the static inputs are written
  c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, index);
  c10::cuda::CUDAStreamGuard on_side(side);
  for (int i = 0; i < 2; ++i) fn(c->inputs);
  side.synchronize();
  try {
    c->graph.capture_begin(pool_, cudaStreamCaptureModeThreadLocal);
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
    uncapturable_.insert(key);
    return nullptr;
  }
  side.synchronize();
  return c;
}

void Captures::drop_least_recent() {
  auto oldest = std::min_element(captures_.begin(), captures_.end(), [](const auto& a, const auto& b) {
    return a.second->last_used < b.second->last_used;
  });
  captures_.erase(oldest);
}

}  // namespace soat::detail
