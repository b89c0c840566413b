#!/usr/bin/env bash
# One GPU call that installs, checks and times everything; results land in $OUT.
#
#   pip wheel --no-deps --no-build-isolation -w .whl .      # here, before the call
#   bash bench/gpu_run.sh [quick]                           # there (the device tool's run)
#
# Uses onnxruntime-gpu from /tmp/site when it was staged there (../shared/tools/stage-wheels
# onnxruntime-gpu==1.31.1 prints the calls; end the last one with `export PYTHONPATH=/tmp/site &&
# bash bench/gpu_run.sh`). Every step is bounded, prints line by line and writes under $OUT as it
# goes, so a call cut short still returns what was measured.
set -u
OUT=${OUT:-/tmp/soat-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/soat-site .whl/soat-*.whl || exit 1
export PYTHONPATH=/tmp/soat-site:${PYTHONPATH:-}
cd /tmp  # away from the checkout, whose soat/ folder would shadow the installed package
SOAT="python3 -m soat"
log() { echo "== $*" | tee -a "$OUT/log.txt"; }

log "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/log.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/log.txt"
python3 -c "import onnxruntime as o; o.preload_dlls(); print('onnxruntime', o.__version__, o.get_available_providers())" \
  2>&1 | tail -1 | tee -a "$OUT/log.txt"

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

log "kernel microbenchmarks"
timeout 240 python3 -m soat.bench.kernels --csv "$OUT/kernels.csv" 2>&1 | tail -60 | tee -a "$OUT/log.txt"

BATCHES=${BATCHES:-1,8,32}
log "task suite: torch fp32 / fp16 / bf16, eager and CUDA graphs"
timeout 420 $SOAT bench --size 256 --dtypes fp32,fp16,bf16 --batches "$BATCHES" \
  --tasks generate,blend,merge_extension,blend_bbox,expand,patch_swap,panorama_stream -o "$OUT/bench256" 2>&1 \
  | grep --line-buffered -v "bench:" | tee -a "$OUT/log.txt"

if python3 -c "import onnxruntime as o; o.preload_dlls(); assert 'CUDAExecutionProvider' in o.get_available_providers()" 2>/dev/null; then
  log "ONNX Runtime CUDA vs torch fp32"
  SOAT_CACHE_DIR=/tmp/soat-cache timeout 300 $SOAT bench --size 256 --backends onnxruntime --dtypes fp32 \
    --graphs off --batches 1,8 --iters 20 \
    --tasks generate,blend,merge_extension,blend_bbox,expand,patch_swap,panorama_stream -o "$OUT/ort256" 2>&1 \
    | grep --line-buffered -v "bench:" | tee -a "$OUT/log.txt"
fi

log "1024 px model runs"
timeout 120 $SOAT bench --size 1024 --dtypes fp16 --batches 1 --tasks generate,merge_extension --graphs on \
  --iters 10 -o "$OUT/bench1024" 2>&1 | grep --line-buffered -v "bench:" | tee -a "$OUT/log.txt"
