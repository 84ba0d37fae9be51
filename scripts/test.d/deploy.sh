#!/usr/bin/env bash
# tests/test_deploy_scripts.py runs shellcheck on the deploy scripts: install it from Debian.
set -euo pipefail
if ! command -v shellcheck >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
fi
