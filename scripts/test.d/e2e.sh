#!/usr/bin/env bash
# tests/e2e/ drives mixpanel-browser in Debian's Chromium (headless) with npm playwright-core
# (executablePath: never a browser download), and the real Python and Node SDKs.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v chromium >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
# node_modules from before playwright-core joined package.json: add what is missing.
if [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/mixpanel-browser ] || [ ! -d node_modules/mixpanel ]; then
  npm install --no-audit --no-fund --loglevel=error
fi
