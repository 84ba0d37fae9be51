#!/usr/bin/env bash
# Replay the Dockerfile without a Docker engine and start the app as the image would:
# the base image's Python in a fresh venv, every COPY (filtered by .dockerignore) and
# RUN step, then the image's exact CMD and ENV as its non-root USER, checked through the
# HEALTHCHECK, /ping and a stored /track event. See scripts/image_replay.py.
#   scripts/image-replay.sh [--keep] [--exact-pip]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/image_replay.py "$@"
