// Internal: a task replayed from one CUDA graph per input shapes (libsoat built against a CUDA libtorch); without
// CUDA, or with graphs off, the task runs as called.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#ifdef SOAT_CUDA
#include <ATen/cuda/CUDAGraph.h>
#endif

namespace soat::detail {

using TaskFn = std::function<at::Tensor(const std::vector<at::Tensor>&)>;

#ifdef SOAT_CUDA

class Captures {
 public:
  Captures(c10::Device device, c10::ScalarType dtype, bool on);
  ~Captures();
  // fn(inputs), replayed from the capture of (task, input shapes) where graphs are on (capture.cpp says why)
  at::Tensor run(const std::string& task, const std::vector<at::Tensor>& inputs, const TaskFn& fn);

 private:
  struct Capture;
  std::unique_ptr<Capture> capture(const std::string& key, const std::vector<at::Tensor>& inputs, const TaskFn& fn);
  void drop_least_recent();

  c10::Device device_;
  c10::ScalarType dtype_;
  bool on_;
  std::map<std::string, std::unique_ptr<Capture>> captures_;  // "task|shapes" -> its graph
  std::set<std::string> uncapturable_;                         // keys whose capture failed: run eagerly
  uint64_t calls_ = 0;
  // shared by every capture: a Generator is used from one thread, on one stream, so replays never overlap
  at::cuda::MempoolId_t pool_{0, 0};
};

#else

class Captures {
 public:
  Captures(c10::Device, c10::ScalarType, bool) {}
  at::Tensor run(const std::string&, const std::vector<at::Tensor>& inputs, const TaskFn& fn) { return fn(inputs); }
};

#endif

}  // namespace soat::detail
