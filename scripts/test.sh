#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs the Python and Node test
# dependencies into ./.venv and ./node_modules, runs each stand-in's install hook in
# scripts/test.d/ (e.g. PostgreSQL from Debian, bqemulator and fakesnow in venvs of
# their own), then runs pytest. The suite starts (and stops) every local stand-in it
# needs once per run: the Mixpanel double, moto, fake-gcs-server, Azurite, the
# warehouses' stand-ins, and the proxy itself under gunicorn.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
if [ ! -d node_modules/mixpanel ] || [ ! -d node_modules/azurite ]; then
  npm install --no-audit --no-fund --loglevel=error
fi
for hook in scripts/test.d/*.sh; do
  [ -e "$hook" ] || continue
  bash "$hook"
done
exec .venv/bin/python -m pytest "$@"
