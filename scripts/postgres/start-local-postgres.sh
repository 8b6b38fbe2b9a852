#!/usr/bin/env bash
# Start reatt's local test database server: Debian's PostgreSQL cluster (`<version> main`,
# started with pg_ctlcluster, no systemd), with a role and a database for the tests that
# log in with a password over TCP on localhost (pg_hba's default scram-sha-256 line).
# Idempotent: a running cluster, an existing role or database are kept (the role's password
# is set again). The tests give each test a schema of its own inside the database.
#
# Usage (as root):  scripts/postgres/install-postgres.sh    # once: the Debian package
#                   scripts/postgres/start-local-postgres.sh
#                   scripts/postgres/stop-local-postgres.sh [--purge]
# Env knobs (all optional):
#   REATT_PG_USER      the tests' role                       (default reatt)
#   REATT_PG_PASSWORD  its password                          (default reatt-test)
#   REATT_PG_DATABASE  the tests' database, owned by it      (default reatt_test)
#   REATT_PG_TIMEOUT   seconds to wait for the server        (default 60)
# Prints the database URL, password hidden; the tests build the same URL from these knobs.
set -euo pipefail

USER_=${REATT_PG_USER:-reatt}
PASSWORD=${REATT_PG_PASSWORD:-reatt-test}
DATABASE=${REATT_PG_DATABASE:-reatt_test}
TIMEOUT=${REATT_PG_TIMEOUT:-60}

die() { echo "start-local-postgres: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (pg_ctlcluster starts the cluster as the postgres user)"
command -v pg_ctlcluster >/dev/null || die "no pg_ctlcluster: run scripts/postgres/install-postgres.sh first"
[[ $USER_ =~ ^[a-z_][a-z0-9_]*$ && $DATABASE =~ ^[a-z_][a-z0-9_]*$ ]] ||
  die "REATT_PG_USER and REATT_PG_DATABASE: lower-case letters, digits and '_' only"

# the newest cluster called main (Debian 12: 15 main), created if the package made none
VERSION=$(pg_lsclusters -h | awk '$2 == "main" {print $1}' | sort -n | tail -n 1)
if [ -z "$VERSION" ]; then
  VERSION=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
  [ -n "$VERSION" ] || die "no PostgreSQL server in /usr/lib/postgresql"
  pg_createcluster "$VERSION" main >/dev/null
fi
PORT=$(pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $3}')
status=$(pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $4}')
if [ "$status" != online ]; then
  pg_ctlcluster "$VERSION" main start || {
    tail -n 20 "/var/log/postgresql/postgresql-$VERSION-main.log" >&2 || true
    die "pg_ctlcluster $VERSION main start failed"
  }
fi
end=$((SECONDS + TIMEOUT))
until pg_isready -q -h 127.0.0.1 -p "$PORT"; do
  [ $SECONDS -lt $end ] || die "PostgreSQL $VERSION not accepting connections on 127.0.0.1:$PORT after ${TIMEOUT}s"
  sleep 0.2
done

psql_admin() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" "$@"; }
# the password goes through the environment into a psql variable (:'pw' quotes it), never on
# a command line (where ps would show it)
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$USER_'")" != 1 ]; then
  psql_admin -c "CREATE ROLE $USER_ LOGIN CREATEDB"
fi
export REATT_PG_PASSWORD_FOR_PSQL=$PASSWORD
printf '%s\n' '\getenv pw REATT_PG_PASSWORD_FOR_PSQL' "ALTER ROLE $USER_ WITH LOGIN CREATEDB PASSWORD :'pw';" |
  psql_admin >/dev/null
unset REATT_PG_PASSWORD_FOR_PSQL
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" != 1 ]; then
  psql_admin -c "CREATE DATABASE $DATABASE OWNER $USER_"
fi
# the way the tests log in: password over TCP
PGPASSWORD=$PASSWORD psql -X -q -h 127.0.0.1 -p "$PORT" -U "$USER_" -d "$DATABASE" -tAc 'SELECT 1' >/dev/null ||
  die "cannot log in as $USER_ with its password over TCP (pg_hba.conf of $VERSION/main?)"
echo "PostgreSQL $VERSION/main up: postgresql+psycopg://$USER_:***@127.0.0.1:$PORT/$DATABASE"
