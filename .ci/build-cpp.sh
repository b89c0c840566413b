#!/usr/bin/env bash
# CI for the C++ embedding (issue 19): Debian packages, the shared 32px AOTI test export, cmake configure and
# build of libsoat / soat-cpp into build/, then ctest on that export. Run from .ci/run inside its venv (the
# torch wheel provides libtorch); tests/test_aoti.py and tests/test_cpp.py reuse the export and the build.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends cmake g++ make nlohmann-json3-dev libpng-dev libssl-dev >/dev/null
start=$SECONDS
EXPORT=$(cd tests && python -c "from test_aoti import aoti_export_dir; print(aoti_export_dir())" | tail -1)
echo "aoti test export: $EXPORT ($((SECONDS - start)) s)"
start=$SECONDS
cmake -S . -B build -DCMAKE_PREFIX_PATH="$(python -c 'import torch;print(torch.utils.cmake_prefix_path)')" \
      -DSOAT_TEST_EXPORT="$EXPORT" >/dev/null
cmake --build build -j "$(nproc)"
echo "libsoat build: $((SECONDS - start)) s"
ctest --test-dir build --output-on-failure
