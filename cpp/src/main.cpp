// soat-cpp: generate, blend, merge, expand and panorama columns from an AOTI export folder, as PNG.
#include <cmath>
#include <cstdlib>
#include <type_traits>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <c10/util/Exception.h>
#include <torch/cuda.h>

#include "soat/soat.h"

namespace {

const char* kUsage =
    "usage: soat-cpp generate DIR --seed S [--truncation T] -o out.png\n"
    "       soat-cpp blend DIR --seeds A B [--mode horizontal|vertical] [--truncation T] -o out.png\n"
    "       soat-cpp merge DIR --seeds A B [--truncation T] -o out.png\n"
    "       soat-cpp expand DIR --seed S [--mode reflect|...] [--noise random|fixed] [--truncation T] -o out.png\n"
    "       soat-cpp columns DIR --seed S --start X --width W [--truncation T] -o out.png\n"
    "       soat-cpp bench DIR [--task generate|blend|merge] [--batch B] [--iters N] [--warmup W]\n"
    "       (--device cpu|cuda[:i]: default the export's device; --cuda-graphs on|off: CUDA graphs, default on; --graphs: its old name)";

struct Args {
  std::string command, dir, out, mode, noise = "random", device, graphs = "on";
  std::vector<std::string> seeds;
  std::map<std::string, std::string> opts;
};

// an integer option: digits only (a '-' first where signed), in range; "+5", " 5" or "5 " are refused, as a
// seed that reads differently elsewhere would name another image
template <class T>
T parse_int(const std::string& name, const std::string& v) {
  const bool is_unsigned = std::is_unsigned<T>::value;
  const std::string digits = !is_unsigned && !v.empty() && v[0] == '-' ? v.substr(1) : v;
  try {
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos)
      throw std::invalid_argument("");
    return is_unsigned ? static_cast<T>(std::stoull(v)) : static_cast<T>(std::stoll(v));
  } catch (const std::exception&) {
    throw soat::Error(name + " " + v + (is_unsigned ? " must be an integer >= 0" : " must be an integer"));
  }
}

double parse_f(const std::string& name, const std::string& v) {
  try {
    size_t used = 0;
    double x = std::stod(v, &used);
    if (used != v.size() || !std::isfinite(x)) throw std::invalid_argument("");
    return x;
  } catch (const std::exception&) {
    throw soat::Error(name + " " + v + " must be a finite number");
  }
}

Args parse(int argc, char** argv) {
  if (argc < 3) throw soat::Error(std::string("missing command and export folder\n") + kUsage);
  Args a;
  a.command = argv[1];
  a.dir = argv[2];
  for (int i = 3; i < argc; ++i) {
    std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw soat::Error(k + " needs a value");
      return argv[++i];
    };
    if (k == "-o" || k == "--output") a.out = value();
    else if (k == "--seeds") {
      a.seeds.push_back(value());
      a.seeds.push_back(value());
    } else if (k == "--mode") a.mode = value();
    else if (k == "--noise") a.noise = value();
    else if (k == "--device") a.device = value();
    else if (k == "--cuda-graphs" || k == "--graphs") a.graphs = value();
    else if (k == "--seed" || k == "--start" || k == "--width" || k == "--truncation" || k == "--task" ||
             k == "--batch" || k == "--iters" || k == "--warmup")
      a.opts[k] = value();
    else throw soat::Error("unknown option " + k);
  }
  if (a.out.empty() && a.command != "bench") throw soat::Error("-o out.png is required");
  if (!a.out.empty()) soat::check_png_path(a.out);
  if (a.graphs != "on" && a.graphs != "off") throw soat::Error("--cuda-graphs " + a.graphs + " must be on or off");
  return a;
}

std::string need(const Args& a, const std::string& k) {
  auto it = a.opts.find(k);
  if (it == a.opts.end()) throw soat::Error(a.command + " needs " + k);
  return it->second;
}

int64_t positive(const Args& a, const std::string& k, int64_t fallback) {
  auto it = a.opts.find(k);
  if (it == a.opts.end()) return fallback;
  auto n = parse_int<int64_t>(k, it->second);
  if (n < 1) throw soat::Error(k + " " + it->second + " must be at least 1");
  return n;
}

// Times one task call on a batch of seeded styles (computed once, outside the timing), each call
// waited for, as `soat bench` times the Python runtime: prints the median and the 10th/90th percentiles.
int bench(soat::Generator& G, const Args& a, double psi) {
  std::string task = a.opts.count("--task") ? a.opts.at("--task") : "generate";
  int64_t batch = positive(a, "--batch", 1), iters = positive(a, "--iters", 50), warmup = positive(a, "--warmup", 10);
  std::vector<uint64_t> seeds(2 * batch);
  for (size_t i = 0; i < seeds.size(); ++i) seeds[i] = i;
  auto s = G.styles(G.seed_z(seeds), psi);
  soat::Styles s1, s2;
  for (size_t k = 0; k < s.size(); ++k) {
    s1.push_back(s[k].slice(0, 0, batch));
    s2.push_back(s[k].slice(0, batch, 2 * batch));
  }
  std::function<at::Tensor()> call;
  if (task == "generate") call = [&] { return G.generate(s1); };
  else if (task == "blend") call = [&] { return G.blend(s1, s2); };
  else if (task == "merge") call = [&] { return G.merge_extension(s1, s2); };
  else throw soat::Error("--task " + task + " is not one of generate, blend, merge");
  const bool cuda = G.device().is_cuda();
  auto wait = [&] { if (cuda) torch::cuda::synchronize(G.device().index()); };
  for (int64_t i = 0; i < warmup; ++i) call();
  wait();
  std::vector<double> ms;
  for (int64_t i = 0; i < iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    call();
    wait();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  auto at = [&](double q) { return ms[static_cast<size_t>(q * (ms.size() - 1))]; };
  std::string where = G.device().str() + " " + c10::toString(G.dtype()) + (cuda ? " cuda-graphs " + a.graphs : "");
  std::printf("soat-cpp bench %s b%lld %s: median %.3f ms (p10 %.3f, p90 %.3f), %.1f img/s, %lld iters\n",
              task.c_str(), static_cast<long long>(batch), where.c_str(), at(0.5), at(0.1), at(0.9),
              batch * 1e3 / at(0.5), static_cast<long long>(iters));
  return 0;
}

int run(int argc, char** argv) {
  Args a = parse(argc, argv);
  static const std::vector<std::string> commands{"generate", "blend", "merge", "expand", "columns", "bench"};
  if (std::find(commands.begin(), commands.end(), a.command) == commands.end())
    throw soat::Error("unknown command '" + a.command + "'\n" + kUsage);
  double psi = a.opts.count("--truncation") ? parse_f("--truncation", a.opts["--truncation"]) : 0.7;
  soat::Generator G(a.dir, a.device, a.graphs == "on");
  if (a.command == "bench") return bench(G, a, psi);
  at::Tensor img;
  if (a.command == "generate") {
    img = G.generate(G.styles(G.seed_z({parse_int<uint64_t>("--seed", need(a, "--seed"))}), psi));
  } else if (a.command == "blend" || a.command == "merge") {
    if (a.seeds.size() != 2) throw soat::Error(a.command + " needs --seeds A B");
    auto s = G.styles(G.seed_z({parse_int<uint64_t>("--seeds", a.seeds[0]),
                                parse_int<uint64_t>("--seeds", a.seeds[1])}), psi);
    if (a.command == "merge") {
      img = G.merge_extension(G.pick(s, 0), G.pick(s, 1));
    } else {
      std::string mode = a.mode.empty() ? "horizontal" : a.mode;
      if (mode != "horizontal" && mode != "vertical")
        throw soat::Error("--mode " + mode + " is not a blend mode; use horizontal or vertical");
      img = G.blend(G.pick(s, 0), G.pick(s, 1), mode == "vertical");
    }
  } else if (a.command == "expand") {
    uint64_t seed = parse_int<uint64_t>("--seed", need(a, "--seed"));
    if (a.noise != "random" && a.noise != "fixed") throw soat::Error("--noise must be random or fixed");
    auto s = G.styles(G.seed_z({seed}), psi);
    img = G.expand(s, a.mode.empty() ? "reflect" : a.mode,
                   a.noise == "random" ? std::optional<uint64_t>(seed) : std::nullopt);
  } else {
    img = G.columns(parse_int<uint64_t>("--seed", need(a, "--seed")),
                    parse_int<int64_t>("--start", need(a, "--start")),
                    parse_int<int64_t>("--width", need(a, "--width")), psi);
  }
  soat::save_png(img, a.out);
  std::cout << a.out << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const c10::Error& e) {
    std::string m = e.what_without_backtrace();
    std::cerr << "soat-cpp: error: " << m.substr(0, m.find('\n')) << "\n";
  } catch (const std::exception& e) {
    std::string m = e.what();
    std::cerr << "soat-cpp: error: " << m.substr(0, m.find('\n')) << "\n";
    if (m.find('\n') != std::string::npos && std::string(e.what()).find("usage:") != std::string::npos)
      std::cerr << kUsage << "\n";
  }
  return 2;
}
