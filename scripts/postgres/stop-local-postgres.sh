#!/usr/bin/env bash
# Stop reatt's local test database server (see start-local-postgres.sh): pg_ctlcluster stop
# of the cluster `<version> main`.
#
# Usage (as root):  scripts/postgres/stop-local-postgres.sh           keep the test database
#                   scripts/postgres/stop-local-postgres.sh --purge   first drop the tests'
#                       database and role (REATT_PG_DATABASE, REATT_PG_USER as for start)
set -uo pipefail

PURGE=0
case "${1:-}" in
  --purge) PURGE=1 ;;
  "") ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac
USER_=${REATT_PG_USER:-reatt}
DATABASE=${REATT_PG_DATABASE:-reatt_test}
[ "$(id -u)" = 0 ] || { echo "stop-local-postgres: run as root" >&2; exit 1; }
command -v pg_ctlcluster >/dev/null || { echo "stop-local-postgres: no PostgreSQL installed"; exit 0; }
VERSION=$(pg_lsclusters -h | awk '$2 == "main" {print $1}' | sort -n | tail -n 1)
[ -n "$VERSION" ] || { echo "stop-local-postgres: no cluster called main"; exit 0; }
PORT=$(pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $3}')
status=$(pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $4}')
if [ "$status" = online ]; then
  if [ "$PURGE" = 1 ] && [[ $USER_ =~ ^[a-z_][a-z0-9_]*$ && $DATABASE =~ ^[a-z_][a-z0-9_]*$ ]]; then
    runuser -u postgres -- psql -X -q -p "$PORT" -c "DROP DATABASE IF EXISTS $DATABASE WITH (FORCE)" \
      -c "DROP ROLE IF EXISTS $USER_" || true
  fi
  pg_ctlcluster "$VERSION" main stop -m fast || { echo "stop-local-postgres: stop failed" >&2; exit 1; }
fi
echo "PostgreSQL $VERSION/main stopped"
