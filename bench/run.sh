#!/usr/bin/env bash
# The one command: bench/run.sh [--soak 300] [--duration 20] ... (see bench/README.md).
# Installs nginx/wrk (apt) and py-spy (pip, bench/requirements.txt) if missing, runs every
# scenario against 127.0.0.1 only, writes bench/RESULTS.md, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m bench "$@"
