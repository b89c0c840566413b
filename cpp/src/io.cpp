// Files of an export folder and images out: .npz arrays (NumPy's stored zip of .npy) and PNG via libpng.
#include <fcntl.h>
#include <png.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "io.h"

namespace soat::detail {
namespace {

uint64_t le(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

NpyArray parse_npy(const std::string& where, const unsigned char* data, size_t size) {
  if (size < 10 || std::memcmp(data, "\x93NUMPY", 6) != 0) throw IoError(where + " is not a .npy array");
  int major = data[6];
  size_t hlen = major == 1 ? le(data + 8, 2) : le(data + 8, 4);
  size_t off = major == 1 ? 10 : 12;
  if (off + hlen > size) throw IoError(where + ": truncated .npy header");
  std::string header(reinterpret_cast<const char*>(data + off), hlen);
  if (header.find("'descr': '<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos)
    throw IoError(where + ": expected a C-order little-endian float32 array");
  NpyArray a;
  auto lp = header.find("'shape': (");
  auto rp = header.find(')', lp);
  if (lp == std::string::npos || rp == std::string::npos) throw IoError(where + ": no shape in the .npy header");
  std::stringstream ss(header.substr(lp + 10, rp - lp - 10));
  std::string item;
  size_t count = 1;
  while (std::getline(ss, item, ',')) {
    if (item.find_first_not_of(' ') == std::string::npos) continue;
    a.shape.push_back(std::stoll(item));
    count *= static_cast<size_t>(a.shape.back());
  }
  off += hlen;
  if (off + count * 4 != size) throw IoError(where + ": data size does not match the shape");
  a.data.resize(count);
  std::memcpy(a.data.data(), data + off, count * 4);
  return a;
}

}  // namespace

Bytes read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IoError("cannot open " + path);
  Bytes buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw IoError("cannot read " + path);
  return buf;
}

void write_bytes(const std::string& path, const Bytes& data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw IoError("cannot create " + path + " (" + std::strerror(errno) + ")");
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0 || done != data.size()) throw IoError("cannot write " + path);
}

std::map<std::string, NpyArray> parse_npz(const std::string& where, const Bytes& buf) {
  std::map<std::string, NpyArray> out;
  size_t pos = 0;
  while (pos + 30 <= buf.size() && le(&buf[pos], 4) == 0x04034b50) {  // local file headers, in order
    const unsigned char* h = &buf[pos];
    uint64_t method = le(h + 8, 2), csize = le(h + 18, 4), usize = le(h + 22, 4);
    size_t nlen = le(h + 26, 2), xlen = le(h + 28, 2);
    if (pos + 30 + nlen + xlen > buf.size()) break;
    std::string name(reinterpret_cast<const char*>(h + 30), nlen);
    const unsigned char* extra = h + 30 + nlen;
    for (size_t e = 0; e + 4 <= xlen;) {  // zip64 sizes (NumPy writes them)
      uint64_t id = le(extra + e, 2), len = le(extra + e + 2, 2);
      if (id == 1 && len >= 16) {
        usize = le(extra + e + 4, 8);
        csize = le(extra + e + 12, 8);
      }
      e += 4 + len;
    }
    if (method != 0 || csize != usize) throw IoError(where + ": " + name + " is compressed; expected np.savez output");
    size_t data = pos + 30 + nlen + xlen;
    if (data + csize > buf.size()) throw IoError(where + ": truncated archive");
    std::string key = name.size() > 4 ? name.substr(0, name.size() - 4) : name;
    out[key] = parse_npy(where + ":" + name, &buf[data], csize);
    pos = data + csize;
  }
  if (out.empty()) throw IoError(where + " holds no arrays");
  return out;
}

namespace {

// A new file beside path (its name in tmp), opened exclusively with a new file's usual mode (0666 less the umask)
FILE* create_beside(const std::string& path, std::string& tmp) {
  static std::atomic<unsigned> counter{0};
  auto slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  for (int attempt = 0; attempt < 100; ++attempt) {
    tmp = dir + "." + base + "." + std::to_string(getpid()) + "-" + std::to_string(counter++) + ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      if (FILE* fp = fdopen(fd, "wb")) return fp;
      ::close(fd);
      ::unlink(tmp.c_str());
      break;
    }
    if (errno != EEXIST) break;
  }
  throw IoError("cannot write " + path + ": cannot create a file in its folder (" + std::strerror(errno) + ")");
}

// libpng into an open file; false where it failed (libpng reports through longjmp, so no C++ objects live here)
bool png_to(FILE* fp, const uint8_t* rgb, int64_t height, int64_t width) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_init_io(png, fp);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int64_t y = 0; y < height; ++y) png_write_row(png, const_cast<uint8_t*>(rgb + y * width * 3));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}

}  // namespace

void write_png_rgb(const std::string& path, const uint8_t* rgb, int64_t height, int64_t width) {
  std::string tmp;
  FILE* fp = create_beside(path, tmp);
  bool ok = png_to(fp, rgb, height, width);
  ok = std::fclose(fp) == 0 && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    throw IoError("cannot write " + path);
  }
}

}  // namespace soat::detail
