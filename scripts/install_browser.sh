#!/usr/bin/env bash
# Install what tests/e2e/test_web_page.py needs: Debian's chromium (headless browser) and the
# pinned playwright-core that drives it. Idempotent; needs root (or sudo) for apt only.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi

command -v npm >/dev/null 2>&1 || { echo "npm not found: install Node.js 18+ (apt-get install nodejs npm)" >&2; exit 1; }
cd tests/e2e/web
# playwright-core ships no browser and downloads none; it drives /usr/bin/chromium.
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund
else
  npm install --no-audit --no-fund
fi
