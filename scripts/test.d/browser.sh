#!/usr/bin/env bash
# Headless Chromium from Debian and npm playwright-core to drive it (never a browser download):
# the browser tests (tests/test_demo.py) load the /demo page in it. playwright-core lives in
# .standins/browser/ so it does not touch the project's node_modules. Idempotent and quick
# when both are there.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

PLAYWRIGHT_VERSION=1.65.1
dir=.standins/browser
installed=$(node -p "require('./$dir/node_modules/playwright-core/package.json').version" 2>/dev/null || true)
if [ "$installed" != "$PLAYWRIGHT_VERSION" ]; then
  mkdir -p "$dir"
  [ -f "$dir/package.json" ] || echo '{"name": "browser-standin", "private": true}' >"$dir/package.json"
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "playwright-core@$PLAYWRIGHT_VERSION"
fi
