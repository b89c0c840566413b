#!/usr/bin/env bash
# Install what tests/test_viewer.py needs: Debian's chromium and Playwright's Python package,
# which drives that chromium (Playwright's own browser download is never used).
# Idempotent and bounded in time; run it with the Python environment of the tests active
# (or PYTHON=/path/to/python). Exits non-zero if either cannot be installed.
set -euo pipefail

PYTHON=${PYTHON:-python}

if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq
  timeout 900 apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

if ! "$PYTHON" -c "import playwright.sync_api" >/dev/null 2>&1; then
  timeout 600 "$PYTHON" -m pip install -q "playwright>=1.40"
fi

# Fail here, not in the test, if the browser cannot start headless (its log is shown only then).
profile=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$profile" "$log"' EXIT
if ! timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --dump-dom about:blank >/dev/null 2>"$log"; then
  cat "$log" >&2
  echo "install-browser: chromium does not start headless" >&2
  exit 1
fi
echo "install-browser: $(chromium --version 2>/dev/null)," \
  "playwright $("$PYTHON" -c 'from importlib.metadata import version; print(version("playwright"))')"
