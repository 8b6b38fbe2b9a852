#!/usr/bin/env bash
# Install the Debian packages that start-local-slurm.sh needs (Debian 12, as root):
#   slurmctld slurmd slurm-client munge        the controller, the node, sbatch & co.
#   slurmdbd mariadb-server                    accounting, so that `sacct` works
# Idempotent: when every package is already installed it does nothing (not even
# `apt-get update`). Quiet: apt's output goes to a log that is shown only on failure.
#
# Usage:  scripts/slurm/install-slurm.sh
# Env:    REATT_SLURM_ACCOUNTING=0   skip slurmdbd + mariadb-server (then no sacct)
set -euo pipefail

PKGS=(slurmctld slurmd slurm-client munge)
if [ "${REATT_SLURM_ACCOUNTING:-1}" = 1 ]; then PKGS+=(slurmdbd mariadb-server); fi

die() { echo "install-slurm: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
command -v apt-get >/dev/null || die "needs apt-get (Debian/Ubuntu)"

missing=()
for p in "${PKGS[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} = 0 ]; then
  echo "install-slurm: already installed: ${PKGS[*]}"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
LOG=$(mktemp /tmp/install-slurm.XXXXXX.log)
# Package postinst scripts must not start daemons: start-local-slurm.sh starts its own,
# and records their pids. Debian container images ship a policy-rc.d that says so
# (exit 101); where there is none, put one in place for the duration of the install.
POLICY=/usr/sbin/policy-rc.d
ours_policy=0
cleanup() { if [ $ours_policy = 1 ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# temporary, from reatt install-slurm.sh\nexit 101\n' >"$POLICY"
  chmod 0755 "$POLICY"
  ours_policy=1
fi

apt_install() { apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$LOG" 2>&1; }
t0=$SECONDS
# Package lists missing or stale (404 on a download): update them once and retry.
if ! apt_install; then
  if ! { apt-get update -q >>"$LOG" 2>&1 && apt_install; }; then
    tail -n 40 "$LOG" >&2
    die "apt-get install ${missing[*]} failed (full log: $LOG)"
  fi
fi
rm -f "$LOG"
echo "install-slurm: installed ${missing[*]} in $((SECONDS - t0)) s"
