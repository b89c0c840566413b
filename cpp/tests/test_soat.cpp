// ctest unit tests of libsoat. Without an argument: the sampler against values NumPy computed, PNG
// rounding and writing. With an export folder (argv[1]; ctest passes -DSOAT_TEST_EXPORT): loading, every task's
// shape and range, batching, seed_z and the refusals.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include <ATen/ATen.h>

#include "soat/soat.h"

static int failures = 0;
#define SOAT_CHECK(cond)                                                               \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond "\n"; \
      ++failures;                                                                 \
    }                                                                             \
  } while (0)

static double hexd(const char* s) { return std::strtod(s, nullptr); }

static void test_sampler() {
  // soat.runtime.tasks.endless_sampler, computed by NumPy
  auto raw = soat::raw_latent(7, -2);
  SOAT_CHECK(raw[0] == hexd("0x1.1e0ff0a84611dp+0"));
  SOAT_CHECK(raw[100] == hexd("-0x1.af547edd00e9ep+0"));
  SOAT_CHECK(raw[511] == hexd("0x1.ab06be4980aeap-2"));
  struct Case { uint64_t seed; int64_t index; const char* v[4]; };
  const Case cases[] = {
      {3, 40, {"0x1.f35f48p-1", "0x1.2226fcp+1", "0x1.81b61ap+0", "0x1.9679e2p+0"}},
      {0, 0, {"-0x1.04c5b8p-2", "-0x1.b14288p+0", "0x1.5e7c94p-1", "-0x1.2028f2p-2"}},
      {18446744073709551615ULL, -5, {"0x1.f1a6acp-2", "0x1.3aa4ecp+0", "0x1.4e0bf0p-1", "0x1.8b941cp-1"}},
  };
  const int64_t at_[4] = {0, 1, 255, 511};
  for (const auto& c : cases) {
    at::Tensor z = soat::endless_latent(c.seed, c.index);
    SOAT_CHECK(z.sizes() == at::IntArrayRef({1, 512}));
    for (int i = 0; i < 4; ++i) SOAT_CHECK(z[0][at_[i]].item<float>() == static_cast<float>(hexd(c.v[i])));
  }
}

static void test_png(const std::filesystem::path& tmp) {
  at::Tensor img = at::tensor({-1.0f, -0.99f, 0.0f, 1.0f, 2.0f, -3.0f}).view({1, 3, 1, 2});
  at::Tensor px = soat::to_uint8(img);
  SOAT_CHECK(px.sizes() == at::IntArrayRef({1, 1, 2, 3}));
  SOAT_CHECK(px[0][0][0][0].item<uint8_t>() == 0 && px[0][0][1][0].item<uint8_t>() == 1);
  SOAT_CHECK(px[0][0][0][1].item<uint8_t>() == 128 && px[0][0][1][1].item<uint8_t>() == 255);
  SOAT_CHECK(px[0][0][0][2].item<uint8_t>() == 255 && px[0][0][1][2].item<uint8_t>() == 0);
  auto path = (tmp / "soat_test.png").string();
  soat::save_png(img, path);
  SOAT_CHECK(std::filesystem::file_size(path) > 8);
  bool threw = false;
  try {
    soat::save_png(at::zeros({2, 3, 4, 4}), path);
  } catch (const soat::Error&) {
    threw = true;
  }
  SOAT_CHECK(threw);
}

static void test_export(const std::string& dir) {
  soat::Generator G(dir);
  const int64_t R = G.size();
  at::Tensor z = G.seed_z({3, 4});
  SOAT_CHECK(at::equal(z[1], at::randn({1, 512}, at::make_generator<at::CPUGeneratorImpl>(4))[0]));
  auto s = G.styles(z, 0.7);
  auto s1 = G.pick(s, 0), s2 = G.pick(s, 1);
  at::Tensor both = G.generate(s);
  SOAT_CHECK(both.sizes() == at::IntArrayRef({2, 3, R, R}));
  SOAT_CHECK(both.abs().max().item<float>() <= 1.0f);
  // a batch of two gives each image as alone (to fp32 rounding)
  SOAT_CHECK((G.generate(s2) - both.slice(0, 1, 2)).abs().max().item<float>() < 1e-4);
  SOAT_CHECK(G.blend(s1, s2).sizes() == at::IntArrayRef({1, 3, R, R}));
  SOAT_CHECK(G.blend(s1, s2, true).sizes() == at::IntArrayRef({1, 3, R, R}));
  at::Tensor merged = G.merge_extension(s1, s2);
  SOAT_CHECK(merged.sizes() == at::IntArrayRef({1, 3, R, 2 * R}));
  // blend and merge run both styles as one batch of 2B: a batch of two pairs gives each pair as alone
  auto t = G.styles(G.seed_z({5, 6}), 0.7);
  SOAT_CHECK((G.merge_extension(s, t).slice(0, 1, 2) - G.merge_extension(s2, G.pick(t, 1))).abs().max().item<float>() <
             1e-4);
  SOAT_CHECK((G.blend(s, t, true).slice(0, 1, 2) - G.blend(s2, G.pick(t, 1), true)).abs().max().item<float>() < 1e-4);
  bool mismatched = false;
  try {
    G.blend(s, s1);
  } catch (const soat::Error& e) {
    mismatched = std::string(e.what()).find("they must match") != std::string::npos;
  }
  SOAT_CHECK(mismatched);
  SOAT_CHECK(G.expand(s1, "reflect").sizes() == at::IntArrayRef({1, 3, R, 2 * R}));
  SOAT_CHECK(G.expand(s1, "vertical", 5).sizes() == at::IntArrayRef({1, 3, 2 * R, R}));
  // columns: any split of a range gives the whole range's pixels
  at::Tensor whole = G.columns(9, 5, 3 * R);
  SOAT_CHECK(whole.sizes() == at::IntArrayRef({1, 3, R, 3 * R}));
  at::Tensor parts = at::cat({G.columns(9, 5, R), G.columns(9, 5 + R, 2 * R)}, 3);
  SOAT_CHECK(at::equal(whole, parts));
  bool threw = false;
  try {
    G.expand(s1, "sideways");
  } catch (const soat::Error& e) {
    threw = std::string(e.what()).find("not an expand mode") != std::string::npos;
  }
  SOAT_CHECK(threw);
  threw = false;
  try {
    soat::Generator bad(dir + "/missing");
  } catch (const soat::Error& e) {
    threw = std::string(e.what()).find("no manifest.json") != std::string::npos;
  }
  SOAT_CHECK(threw);
}

int main(int argc, char** argv) {
  auto tmp = std::filesystem::temp_directory_path();
  test_sampler();
  test_png(tmp);
  if (argc > 1) test_export(argv[1]);
  else std::cout << "no export folder given (cmake -DSOAT_TEST_EXPORT=DIR): export tests skipped\n";
  if (failures) std::cerr << failures << " check(s) failed\n";
  else std::cout << "ok\n";
  return failures ? 1 : 0;
}
