// Internal: the export's AOTI packages, each loaded on first use from bytes its manifest sha256 vouches for.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "manifest.h"

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace soat::detail {

class Packages {
 public:
  Packages(const Manifest& manifest, c10::Device device, c10::ScalarType dtype);
  ~Packages();
  Packages(const Packages&) = delete;
  Packages& operator=(const Packages&) = delete;

  // One graph on inputs in its order (moved to the device and dtype, dense in the layout the manifest lists: a
  // package reads its inputs with the strides it was compiled for, and gives wrong numbers for any others);
  // returns its outputs in the manifest's order.
  std::vector<at::Tensor> run(const std::string& id, std::vector<at::Tensor> inputs);

 private:
  torch::inductor::AOTIModelPackageLoader& loader(const std::string& id);

  const Manifest& manifest_;  // the Generator's, which outlives this
  c10::Device device_;
  c10::ScalarType dtype_;
  std::map<std::string, std::unique_ptr<torch::inductor::AOTIModelPackageLoader>> loaders_;
};

}  // namespace soat::detail
