#!/usr/bin/env bash
# Install a PostgreSQL server for reatt's tests: Debian's `postgresql` package (15 on
# Debian 12), whose postinst creates the cluster `15 main` (not started here). Idempotent.
#
# Usage (as root):  scripts/postgres/install-postgres.sh
#                   scripts/postgres/start-local-postgres.sh
#                   scripts/postgres/stop-local-postgres.sh [--purge]
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "install-postgres: run as root" >&2; exit 1; }
if command -v pg_ctlcluster >/dev/null && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
  echo "install-postgres: already installed: $(pg_lsclusters -h | awk '{print $1"/"$2}' | tr '\n' ' ')"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq postgresql >/dev/null
pg_lsclusters
