// Images out: [-1, 1] to 8-bit pixels and PNG files (soat.runtime.images is the Python twin).
#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>

#include "io.h"
#include "soat/soat.h"

namespace soat {

at::Tensor to_uint8(const at::Tensor& images) {
  at::Tensor x = (images.detach().to(at::kCPU, at::kFloat).clamp(-1, 1) + 1) / 2;
  return at::floor(x * 255 + 0.5).clamp(0, 255).to(at::kByte).permute({0, 2, 3, 1}).contiguous();
}

// as Python's os.path.splitext(path)[1].lower() == ".png": a file name with a stem (not only dots) before ".png"
void check_png_path(const std::string& path) {
  const std::string name = path.substr(path.rfind('/') + 1);
  std::string ext = name.size() > 4 ? name.substr(name.size() - 4) : "";
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  if (ext != ".png" || name.find_first_not_of('.') >= name.size() - 4)
    throw Error("'" + path + "' must end in .png (save_png writes PNG only)");
}

void save_png(const at::Tensor& image, const std::string& path) {
  check_png_path(path);
  if (image.dim() != 4 || image.size(0) != 1 || image.size(1) != 3)
    throw Error("save_png takes one [1, 3, H, W] image");
  if (!at::isfinite(image.detach()).all().item<bool>())
    throw Error("the image for '" + path + "' has NaN or infinite values; nothing was written");
  at::Tensor px = to_uint8(image);
  try {
    detail::write_png_rgb(path, px.data_ptr<uint8_t>(), px.size(1), px.size(2));
  } catch (const detail::IoError& e) {
    throw Error(e.what());
  }
}

}  // namespace soat
