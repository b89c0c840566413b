// ctest unit tests of libsoat. Without an argument: the sampler against values NumPy computed, PNG
// rounding, writing and refusals. With an export folder (argv[1]; ctest passes -DSOAT_TEST_EXPORT): loading, every
// task's shape and range, batching, seed_z, the refusals, and the folder's files read only as verified.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "soat/soat.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

static int failures = 0;
#define SOAT_CHECK(cond)                                                               \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond "\n"; \
      ++failures;                                                                 \
    }                                                                             \
  } while (0)

static double hexd(const char* s) { return std::strtod(s, nullptr); }

static bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The message of the soat::Error that f throws ("" where it throws none)
static std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const soat::Error& e) {
    return e.what();
  }
  return "";
}

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
  SOAT_CHECK(!error_of([&] { soat::save_png(at::zeros({2, 3, 4, 4}), path); }).empty());
}

// save_png refuses what Python's refuses (no .png name, NaN or inf), writes nothing then, and leaves no temporary
// file beside a written one
static void test_png_refusals(const fs::path& tmp) {
  const fs::path dir = tmp / "soat_test_png";
  fs::remove_all(dir);
  fs::create_directories(dir);
  at::Tensor img = at::zeros({1, 3, 2, 2});
  for (const char* name : {"out.jpg", "out", ".png", "out.png/"})
    SOAT_CHECK(has(error_of([&] { soat::save_png(img, (dir / name).string()); }), "must end in .png"));
  for (float bad : {NAN, INFINITY}) {
    at::Tensor spoiled = img.clone();
    spoiled[0][1][1][0] = bad;
    SOAT_CHECK(has(error_of([&] { soat::save_png(spoiled, (dir / "bad.png").string()); }), "NaN or infinite"));
  }
  SOAT_CHECK(fs::is_empty(dir));
  soat::save_png(img, (dir / "out.PNG").string());
  soat::save_png(img, (dir / "out.PNG").string());  // over an existing file
  SOAT_CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator()) == 1);
  fs::remove_all(dir);
}

// A copy of an export folder at dst: manifest.json returned (write_manifest puts it back), every other file a
// symbolic link to the export's (replace_file swaps one for a file of its own, never writing through the link)
static json link_copy(const std::string& src, const fs::path& dst) {
  fs::remove_all(dst);
  fs::create_directories(dst);
  for (const auto& e : fs::directory_iterator(src))
    if (e.path().filename() != "manifest.json") fs::create_symlink(fs::absolute(e.path()), dst / e.path().filename());
  std::ifstream f(fs::path(src) / "manifest.json");
  return json::parse(f);
}

static void write_manifest(const fs::path& dst, const json& j) { std::ofstream(dst / "manifest.json") << j.dump(1); }

static void replace_file(const fs::path& path, const std::string& bytes) {
  fs::remove(path);
  std::ofstream(path, std::ios::binary) << bytes;
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
  SOAT_CHECK(both.is_inference() && s[0].is_inference() && z.is_inference());  // calls run in InferenceMode
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

// A package whose bytes are not those of its manifest sha256 is never loaded: the call that needs it throws one
// line; the noise and mean styles are checked when the Generator is made
static void test_changed_files(const std::string& dir, const fs::path& tmp) {
  const fs::path copy = tmp / "soat_test_changed";
  write_manifest(copy, link_copy(dir, copy));
  replace_file(copy / "input.pt2", "not the exported package");
  soat::Generator G(copy.string());  // packages load on first use
  auto s = G.styles(G.seed_z({3}), 0.7);
  std::string e = error_of([&] { G.generate(s); });
  SOAT_CHECK(has(e, "graph 'input'") && has(e, "changed since export") && has(e, "re-export") && !has(e, "\n"));
  for (const char* name : {"noise.npz", "mean_styles.npz"}) {
    write_manifest(copy, link_copy(dir, copy));
    replace_file(copy / name, "PK not the exported arrays");
    e = error_of([&] { soat::Generator bad(copy.string()); });
    SOAT_CHECK(has(e, name) && has(e, "changed since export"));
  }
  fs::remove_all(copy);
}

// A folder replaced by another export after a Generator was made on it: that Generator gives the first model's
// image or one soat::Error, never a mix. The other export: the 512-channel convs of 8 and 16 px trade their
// packages (and linked packages), a valid folder of another model.
static void test_swapped_folder(const std::string& dir, const fs::path& tmp) {
  const fs::path a = tmp / "soat_test_swap", b = tmp / "soat_test_swap_next", old = tmp / "soat_test_swap_old";
  fs::remove_all(old);
  write_manifest(a, link_copy(dir, a));
  json other = link_copy(dir, b);
  for (std::string suffix : {"", ".linked"}) {
    auto& graphs = other["graphs"];
    if (!graphs.contains("convs.1" + suffix)) continue;
    auto &g1 = graphs["convs.1" + suffix], &g3 = graphs["convs.3" + suffix];
    std::swap(g1["sha256"], g3["sha256"]);
    for (auto [from, to] : {std::make_pair(&g1, &g3), std::make_pair(&g3, &g1)}) {
      fs::remove(b / (*from)["file"].get<std::string>());
      fs::create_symlink(fs::absolute(fs::path(dir) / (*to)["file"].get<std::string>()),
                         b / (*from)["file"].get<std::string>());
    }
  }
  write_manifest(b, other);
  soat::Generator ran(a.string()), fresh(a.string());
  auto s = ran.styles(ran.seed_z({3}), 0.7);
  at::Tensor first = ran.generate(s);
  fresh.styles(fresh.seed_z({3}), 0.7);  // mapping and styles loaded, no layer yet
  fs::rename(a, old);
  fs::rename(b, a);
  SOAT_CHECK(at::equal(ran.generate(s), first));  // every package it runs was loaded before the swap
  SOAT_CHECK(has(error_of([&] { fresh.generate(s); }), "changed since export"));
  soat::Generator after(a.string());
  SOAT_CHECK(!at::allclose(after.generate(s), first, 0, 1e-3));  // the swapped folder is another model
  for (const auto& p : {a, b, old}) fs::remove_all(p);
}

int main(int argc, char** argv) {
  auto tmp = std::filesystem::temp_directory_path();
  test_sampler();
  test_png(tmp);
  test_png_refusals(tmp);
  if (argc > 1) {
    test_export(argv[1]);
    test_changed_files(argv[1], tmp);
    test_swapped_folder(argv[1], tmp);
  } else {
    std::cout << "no export folder given (cmake -DSOAT_TEST_EXPORT=DIR): export tests skipped\n";
  }
  if (failures) std::cerr << failures << " check(s) failed\n";
  else std::cout << "ok\n";
  return failures ? 1 : 0;
}
