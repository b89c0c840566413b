// The export's AOTI packages: verified, loaded on first use, run with the inputs' layouts the manifest lists.
#include "packages.h"

#include <stdlib.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <filesystem>
#include <system_error>

#include "errors.h"
#include "soat/soat.h"

namespace soat::detail {
namespace {

namespace fs = std::filesystem;

// A directory only this user can enter (mkdtemp makes it 0700), removed with its contents at scope exit
class PrivateDir {
 public:
  PrivateDir() {
    std::string name = (fs::temp_directory_path() / "soat-XXXXXX").string();
    if (!mkdtemp(name.data())) throw Error("cannot create a private temporary directory in " + name);
    path_ = name;
  }
  ~PrivateDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  PrivateDir(const PrivateDir&) = delete;
  PrivateDir& operator=(const PrivateDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

}  // namespace

Packages::Packages(const Manifest& manifest, c10::Device device, c10::ScalarType dtype)
    : manifest_(manifest), device_(device), dtype_(dtype) {}

Packages::~Packages() = default;

// The loader opens a package by path, so the bytes whose sha256 was checked go to a private directory and load
// from there: the folder's file may have changed since it was read. The loader extracts the whole package when
// it is constructed, so that copy is removed right after.
torch::inductor::AOTIModelPackageLoader& Packages::loader(const std::string& id) {
  auto it = loaders_.find(id);
  if (it != loaders_.end()) return *it->second;
  const Graph& g = manifest_.graph(id);
  Bytes verified = read_verified(manifest_, g.file);
  PrivateDir dir;
  const std::string path = (dir.path() / g.file.name).string();
  try {
    write_bytes(path, verified);
  } catch (const IoError& e) {
    throw Error(e.what());
  }
  try {
    c10::DeviceIndex index = device_.is_cuda() && device_.has_index() ? device_.index() : -1;
    // single-threaded: no CUDA event per run, so that runs can be captured into a CUDA graph (one Generator per
    // thread, as for its caches)
    auto loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model", true, 1, index);
    return *loaders_.emplace(id, std::move(loader)).first->second;
  } catch (const c10::Error& e) {
    throw Error("cannot load package '" + g.file.path + "': " + first_line(e.what_without_backtrace()));
  }
}

std::vector<at::Tensor> Packages::run(const std::string& id, std::vector<at::Tensor> inputs) {
  auto& model = loader(id);
  const auto& cl = manifest_.graph(id).channels_last;
  for (size_t i = 0; i < inputs.size(); ++i)
    inputs[i] = inputs[i].to(device_, dtype_).contiguous(i < cl.size() && cl[i] ? at::MemoryFormat::ChannelsLast
                                                                                : at::MemoryFormat::Contiguous);
  return model.run(inputs);
}

}  // namespace soat::detail
