#!/usr/bin/env bash
# bqemulator, the BigQuery stand-in, in a venv of its own (.standins/bigquery/): it pins a
# duckdb that other stand-ins (fakesnow) cannot share. Idempotent; a no-op when installed.
# The DuckDB spatial extension is installed from its PyPI wheel into a private HOME
# (.standins/bigquery/home), because DuckDB would otherwise try to download it at run time.
set -euo pipefail
cd "$(dirname "$0")/../.."

DIR=.standins/bigquery
EXT_DIR="$DIR/home/.duckdb/extensions/v1.5.5/linux_amd64"
MARKER="$DIR/installed-1.4.0"

if [ -f "$MARKER" ] && [ -x "$DIR/venv/bin/bqemulator" ] && [ -f "$EXT_DIR/spatial.duckdb_extension" ]; then
  exit 0
fi

mkdir -p "$DIR" "$EXT_DIR"
if [ ! -x "$DIR/venv/bin/python" ]; then
  python3 -m venv "$DIR/venv"
fi
"$DIR/venv/bin/pip" install --quiet --disable-pip-version-check \
  bqemulator==1.4.0 duckdb==1.5.5 duckdb-extension-spatial==1.5.5 numpy
# The extension file ships inside the duckdb-extension-spatial wheel.
found=$("$DIR/venv/bin/python" - <<'PY'
import pathlib, site
for root in site.getsitepackages():
    for path in pathlib.Path(root).rglob("spatial.duckdb_extension"):
        print(path)
        raise SystemExit
PY
)
if [ -z "$found" ]; then
  echo "bigquery stand-in: spatial.duckdb_extension not found in the duckdb-extension-spatial wheel" >&2
  exit 1
fi
cp "$found" "$EXT_DIR/spatial.duckdb_extension"
touch "$MARKER"
echo "bigquery stand-in: bqemulator 1.4.0 installed in $DIR"
