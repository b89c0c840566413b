// The endless panorama's sampler, bit for bit as NumPy's: Philox4x64-10 and Generator.standard_normal.
#include <cmath>
#include <cstdint>
#include <vector>

#include "ziggurat_tables.h"

namespace soat {
namespace {

struct Philox {
  uint64_t ctr[4];
  uint64_t key[2];
  uint64_t buf[4];
  int pos = 4;

  static inline void mulhilo(uint64_t a, uint64_t b, uint64_t* lo, uint64_t* hi) {
    unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
    *lo = static_cast<uint64_t>(p);
    *hi = static_cast<uint64_t>(p >> 64);
  }

  void block() {
    uint64_t c[4] = {ctr[0], ctr[1], ctr[2], ctr[3]}, k[2] = {key[0], key[1]};
    for (int r = 0; r < 10; ++r) {
      if (r) {
        k[0] += 0x9E3779B97F4A7C15ULL;
        k[1] += 0xBB67AE8584CAA73BULL;
      }
      uint64_t lo0, hi0, lo1, hi1;
      mulhilo(0xD2E7470EE14C6C93ULL, c[0], &lo0, &hi0);
      mulhilo(0xCA5A826395121157ULL, c[2], &lo1, &hi1);
      uint64_t n[4] = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
      for (int i = 0; i < 4; ++i) c[i] = n[i];
    }
    for (int i = 0; i < 4; ++i) buf[i] = c[i];
  }

  uint64_t next() {  // NumPy: increment the counter (with carry), then generate
    if (pos < 4) return buf[pos++];
    for (int i = 0; i < 4 && ++ctr[i] == 0; ++i) {
    }
    block();
    pos = 1;
    return buf[0];
  }

  double next_double() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
};

double standard_normal(Philox& g) {
  using namespace detail;
  for (;;) {
    uint64_t r = g.next();
    int idx = static_cast<int>(r & 0xff);
    r >>= 8;
    int sign = static_cast<int>(r & 0x1);
    uint64_t rabs = (r >> 1) & 0x000fffffffffffffULL;
    double x = static_cast<double>(rabs) * kZigWi[idx];
    if (sign & 0x1) x = -x;
    if (rabs < kZigKi[idx]) return x;
    if (idx == 0) {
      for (;;) {
        double xx = -kZigInvR * std::log1p(-g.next_double());
        double yy = -std::log1p(-g.next_double());
        if (yy + yy > xx * xx) return ((rabs >> 8) & 0x1) ? -(kZigR + xx) : kZigR + xx;
      }
    } else if (((kZigFi[idx - 1] - kZigFi[idx]) * g.next_double() + kZigFi[idx]) < std::exp(-0.5 * x * x)) {
      return x;
    }
  }
}

}  // namespace

std::vector<double> raw_latent(uint64_t seed, int64_t j, int64_t dim) {
  Philox g;
  g.ctr[0] = g.ctr[1] = g.ctr[3] = 0;
  g.ctr[2] = static_cast<uint64_t>(j);  // (j mod 2**64) << 128
  g.key[0] = seed;
  g.key[1] = 0;
  std::vector<double> out(dim);
  for (auto& v : out) v = standard_normal(g);
  return out;
}

// soat.runtime.tasks.endless_sampler.WEIGHTS and NORMALISER, stored: NumPy's vectorised exp differs from
// libm's in the last bit for k = +-3, so the values are the constants NumPy computed (sigma 0.7, radius 3).
constexpr double kWeights[7] = {0x1.eaf0abfddfc56p-15, 0x1.3b3170a27df78p-7, 0x1.a4a892b55c7f0p-3,
                                0x1.23c2d39adde1dp-1,  0x1.a4a892b55c7f0p-3, 0x1.3b3170a27df78p-7,
                                0x1.eaf0abfddfc56p-15};
constexpr double kNormaliser = 0x1.478e0dd7a3da3p-1;

std::vector<float> endless_latent_values(uint64_t seed, int64_t index, int64_t dim) {
  const double* w = kWeights;
  const double norm = kNormaliser;
  std::vector<double> acc(dim, 0.0);
  for (int k = 0; k < 7; ++k) {
    auto raw = raw_latent(seed, index - 3 + k, dim);
    for (int64_t i = 0; i < dim; ++i) acc[i] += w[k] * raw[i];
  }
  std::vector<float> out(dim);
  for (int64_t i = 0; i < dim; ++i) out[i] = static_cast<float>(acc[i] / norm);
  return out;
}

}  // namespace soat
