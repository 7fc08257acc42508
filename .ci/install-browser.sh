#!/usr/bin/env bash
# Installs what the browser tests (pytest -m browser, tests/human/test_browser.py) need:
# Debian's Chromium (H.264 playback included) and the Python packages of the labelling page.
# Idempotent: does nothing that is already done. Needs root (or sudo) for apt-get.
set -euo pipefail
PY="${PY:-python}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v chromium >/dev/null 2>&1; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends chromium
fi

# The web stack (pbrl[human]) and the test drivers. Playwright drives the system Chromium
# through executable_path, so no browser download (`playwright install`) is needed.
# Same pins as pyproject's human and test extras (starlette>=0.49.1: HTTP Range for the clips,
# with the fix for the Range-merging DoS).
"$PY" -m pip install -q "fastapi>=0.115" "starlette>=0.49.1" "uvicorn>=0.29" "av>=12" \
  "httpx>=0.27" "schemathesis>=4" "hypothesis>=6.100" "playwright>=1.45"

chromium --version
"$PY" -c "import playwright, fastapi, uvicorn, av; print('browser test dependencies ok')"
