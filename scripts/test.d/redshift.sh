#!/usr/bin/env bash
# Redshift's stand-in: PostgreSQL from Debian (the test suite makes its own throw-away
# cluster with initdb; no system cluster is created or started). Quick when installed.
set -euo pipefail

if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "redshift stand-in: PostgreSQL is missing; install it as root: apt-get install postgresql" >&2
  exit 1
fi
# Install the server without Debian's default cluster: the tests start their own.
mkdir -p /etc/postgresql-common
if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
  echo "create_main_cluster = false" >> /etc/postgresql-common/createcluster.conf
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
