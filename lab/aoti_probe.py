"""Where does loading a CUDA AOTInductor package fail? A standalone probe for one GPU call (issue 19).

    python lab/aoti_probe.py [--out DIR] [--skip-cpp] [--gdb]

Stages, each in its own subprocess so that a segfault is reported (signal, stderr tail, a faulthandler
traceback, and a gdb backtrace where gdb exists) instead of ending the probe:

1. environment: torch / CUDA / driver / GPU, nvidia-smi, ulimits, /dev/shm, LD_LIBRARY_PATH, TMPDIR;
2. compile, all variants at once: torch.export + aoti_compile_and_package of a conv + bias + leaky-ReLU
   module, dynamic batch, for CUDA with the default options, a -O0 wrapper and the kernel binaries embedded
   in the library; a matmul-only module (cuBLAS, no generated Triton kernel) for CUDA; the conv module
   for the CPU as a control;
3. python load: torch._inductor.aoti_load_package + one run against eager, for each package;
4. C++ load: a 30-line AOTIModelPackageLoader program built with CMake against this torch (find_package
   Torch, built while the packages compile), run on each package.

Loads go matmul-only and the CPU control first, each bounded by ``LOAD_TIMEOUT``; crashes are rerun
under gdb only with ``--gdb``; ``probe.json`` is rewritten after every stage.

Writes DIR/probe.json (default ./aoti-probe) and prints one line per stage. Imports nothing from soat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

STAGE_TIMEOUT = 240

MODULE = '''
import torch
class Probe(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.register_buffer("bias2", torch.randn(1, 8, 1, 1))
    def forward(self, x):
        return torch.nn.functional.leaky_relu(self.conv(x) + self.bias2, 0.2)
class MatmulOnly(torch.nn.Module):  # extern (cuBLAS) kernels only: no generated Triton kernel in the package
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(16, 16))
    def forward(self, x):
        return x.reshape(-1, 16) @ self.w
def make(device, variant="conv"):
    torch.manual_seed(0)
    m = (MatmulOnly() if variant == "matmul" else Probe()).to(device).eval()
    x = torch.randn(2, 8, 16, 16, device=device)
    return m, x
'''

COMPILE = MODULE + '''
import sys, time
device, path, variant = sys.argv[1], sys.argv[2], sys.argv[3]
m, x = make(device, variant)
t = time.time()
ep = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
cfg = {"O0": {"aot_inductor.compile_wrapper_opt_level": "O0"},
       "embed": {"aot_inductor.embed_kernel_binary": True}}.get(variant, {})
torch._inductor.aoti_compile_and_package(ep, package_path=path, inductor_configs=cfg)
print("compiled in %.1f s" % (time.time() - t))
'''

LOAD = MODULE + '''
import sys, faulthandler
faulthandler.enable()
device, path, variant = sys.argv[1], sys.argv[2], sys.argv[3]
m, x = make(device, variant)
print("loading", flush=True)
model = torch._inductor.aoti_load_package(path)
print("loaded", flush=True)
x3 = torch.randn(3, 8, 16, 16, device=device)
err = (model(x3) - m(x3)).abs().max().item()
print("max abs err vs eager %.3g" % err, flush=True)
'''

CPP = r'''
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <ATen/ATen.h>
#include <iostream>
int main(int argc, char** argv) {
  try {
    std::cout << "loading " << argv[1] << std::endl;
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    std::cout << "loaded" << std::endl;
    auto device = std::string(argv[2]) == "cuda" ? at::kCUDA : at::kCPU;
    auto out = loader.run({at::randn({3, 8, 16, 16}, at::TensorOptions().device(device))});
    std::cout << "ran: output " << out.at(0).sizes() << std::endl;
  } catch (const std::exception& e) {
    std::cout << "exception: " << std::string(e.what()).substr(0, 400) << std::endl;
    return 3;
  }
  return 0;
}
'''

CMAKE = '''cmake_minimum_required(VERSION 3.18)
project(aoti_probe LANGUAGES CXX)
set(CMAKE_CXX_STANDARD 17)
find_package(Torch REQUIRED)
add_executable(aoti_probe probe.cpp)
target_link_libraries(aoti_probe ${TORCH_LIBRARIES})
target_compile_options(aoti_probe PRIVATE ${TORCH_CXX_FLAGS})
'''


def run(cmd, cwd=None, env=None, timeout=STAGE_TIMEOUT) -> dict:
    t = time.time()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", str(e.stdout or ""), str(e.stderr or "")
    res = {"cmd": " ".join(map(str, cmd))[:300], "rc": rc, "seconds": round(time.time() - t, 1),
           "stdout": out[-2000:], "stderr": err[-3000:]}
    if isinstance(rc, int) and rc < 0:
        res["signal"] = -rc
    return res


def run_all(cmds: list[list[str]], timeout=STAGE_TIMEOUT) -> list[dict]:
    """``run`` for several commands at once (compiles are mostly single-threaded g++): results in order."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(len(cmds)) as pool:
        return list(pool.map(lambda c: run(c, timeout=timeout), cmds))


def gdb_backtrace(cmd) -> str | None:
    if shutil.which("gdb") is None:
        return None
    r = run(["gdb", "-batch", "-ex", "run", "-ex", "bt 25", "--args", *cmd])
    return (r["stdout"] + r["stderr"])[-3000:]


def environment() -> dict:
    import torch
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "cmake_prefix_path": torch.utils.cmake_prefix_path,
           **{k: os.environ.get(k) for k in ("LD_LIBRARY_PATH", "TMPDIR", "TORCHINDUCTOR_CACHE_DIR", "CUDA_HOME")}}
    for name, cmd in (("nvidia_smi", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                      "--format=csv,noheader"]),
                      ("ulimit", ["bash", "-c", "ulimit -a"]), ("shm", ["df", "-h", "/dev/shm", "/tmp"]),
                      ("gcc", ["g++", "--version"]), ("nvcc", ["bash", "-c", "which nvcc && nvcc --version"])):
        r = run(cmd, timeout=30) if shutil.which(cmd[0]) else {"stdout": "absent"}
        env[name] = r["stdout"][-600:]
    return env


LOAD_TIMEOUT = 90  # a load that neither crashes nor finishes in this long is reported as hung


def write_cpp_project(out: str) -> tuple[list[list[str]], str]:
    """The C++ loader's sources under ``out/cpp``: (configure and build commands, the executable's path)."""
    import torch
    src = os.path.join(out, "cpp")
    os.makedirs(src, exist_ok=True)
    for name, text in (("probe.cpp", CPP), ("CMakeLists.txt", CMAKE)):
        with open(os.path.join(src, name), "w") as f:
            f.write(text)
    build = os.path.join(src, "build")
    configure = ["cmake", "-S", src, "-B", build, f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    return [configure, ["cmake", "--build", build, "-j"]], os.path.join(build, "aoti_probe")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="aoti-probe")
    ap.add_argument("--skip-cpp", action="store_true", help="skip the C++ loader stage")
    ap.add_argument("--gdb", action="store_true", help="rerun each crash under gdb for a backtrace (slow)")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    report = {"environment": environment(), "stages": []}
    print(json.dumps({k: report["environment"][k] for k in ("torch", "cuda", "gpu")}), flush=True)

    def record(stage: str, r: dict) -> None:  # probe.json after every stage: a probe cut short keeps its results
        report["stages"].append({"stage": stage, **r})
        with open(os.path.join(out, "probe.json"), "w") as f:
            json.dump(report, f, indent=1)
        last = (r["stdout"].strip().splitlines() or ["(no output)"])[-1]
        print(f"{stage}: rc={r['rc']} signal={r.get('signal')} {r['seconds']} s, last: {last[:200]}", flush=True)

    for name, code in (("compile.py", COMPILE), ("load.py", LOAD)):
        with open(os.path.join(out, name), "w") as f:
            f.write(code)
    # the matmul-only package (no generated kernel) and the CPU control load first: they tell the crash's cause
    variants = ([("cuda", "matmul")] if report["environment"]["cuda_available"] else []) + [("cpu", "conv")]
    variants += [("cuda", v) for v in ("conv", "embed", "O0")] if report["environment"]["cuda_available"] else []
    path = {v: os.path.join(out, f"probe_{v[0]}_{v[1]}.pt2") for v in variants}
    compiles = [[sys.executable, os.path.join(out, "compile.py"), d, path[(d, v)], v] for d, v in variants]
    cpp_steps, exe = write_cpp_project(out) if not args.skip_cpp and shutil.which("cmake") else ([], None)
    # everything that compiles runs at once; the C++ build's two steps run one after the other
    build_cpp = [sys.executable, "-c", "import subprocess, sys; [subprocess.run(c, check=True) for c in "
                 f"{cpp_steps!r}]"] if cpp_steps else None
    results = run_all(compiles + ([build_cpp] if build_cpp else []), timeout=600)
    for (device, variant), r in zip(variants, results):
        record(f"compile {device} {variant}", r)
    cpp_ok = build_cpp is not None and results[-1]["rc"] == 0
    if build_cpp is not None:
        record("cpp build", results[-1])
    for (device, variant), r in zip(variants, results):
        if r["rc"] != 0:
            continue
        loads = [("python", [sys.executable, "-X", "faulthandler", os.path.join(out, "load.py"), device,
                             path[(device, variant)], variant])]
        loads += [("cpp", [exe, path[(device, variant)], device])] if cpp_ok else []
        for how, cmd in loads:
            r = run(cmd, timeout=LOAD_TIMEOUT)
            if r["rc"] != 0 and args.gdb:
                r["gdb"] = gdb_backtrace(cmd)
            record(f"{how} load {device} {variant}", r)
    print(os.path.join(out, "probe.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
