#!/usr/bin/env bash
# The Snowflake stand-in: fakesnow in server mode (it speaks the connector's HTTP protocol,
# PUT uploads included), in a venv of its own under .standins/snowflake/ because its duckdb
# differs from the one the BigQuery stand-in needs. The connector in it is held below 5 like
# the proxy's own (5.x cannot talk to fakesnow). Idempotent: a venv that already has
# fakesnow at this version is left alone.
set -euo pipefail
cd "$(dirname "$0")/../.."

FAKESNOW_VERSION=0.12.1
VENV=.standins/snowflake
if [ -x "$VENV/bin/fakesnow" ] && "$VENV/bin/python" - "$FAKESNOW_VERSION" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
sys.exit(0 if version("fakesnow") == sys.argv[1] and int(version("snowflake-connector-python").split(".")[0]) < 5 else 1)
PY
  exit 0
fi
mkdir -p .standins
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "fakesnow[server]==$FAKESNOW_VERSION" "snowflake-connector-python<5"
