#!/usr/bin/env bash
# Stop reatt's local test cluster (see start-local-slurm.sh): cancel its jobs, then stop
# the daemons that start-local-slurm.sh started, found by their pid files only (no pkill).
# A munged or MariaDB that already ran before the start script is left running.
#
# Usage (as root):  scripts/slurm/stop-local-slurm.sh            keep state: job ids go on
#                   scripts/slurm/stop-local-slurm.sh --purge    also delete the state dir,
#                       the configs the start script wrote and the accounting database,
#                       so that the next start is cold (job ids from 1, empty sacct)
# Env: REATT_SLURM_DIR as for the start script (default: taken from the slurm.conf the
#      start script wrote, else /var/tmp/reatt-slurm).
set -uo pipefail

CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
MARK="# written by reatt scripts/slurm/start-local-slurm.sh; removed by stop-local-slurm.sh --purge"
PURGE=0
case "${1:-}" in
  --purge) PURGE=1 ;;
  "") ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

ours() { grep -qxF "$MARK" "$1" 2>/dev/null; }   # a config written by the start script?
conf_value() { sed -n "s/^$2=//p" "$1" 2>/dev/null | head -n 1; }
if [ -n "${REATT_SLURM_DIR:-}" ]; then
  D=$REATT_SLURM_DIR
elif ours "$CONF" && state=$(conf_value "$CONF" StateSaveLocation) && [ -n "$state" ]; then
  D=${state%/state}
else
  D=/var/tmp/reatt-slurm
fi
[ "$(id -u)" = 0 ] || { echo "stop-local-slurm: must run as root" >&2; exit 1; }

# running PID NAME: PID is a live process called NAME. A zombie does not count (PID 1
# here reaps late, and kill -0 succeeds on zombies), nor a pid reused by another program.
running() { ps -o stat=,comm= -p "$1" 2>/dev/null | grep -Eq "^[^Z][^[:space:]]*[[:space:]]+$2\$"; }
# alive NAME: $D/NAME.pid names a running NAME
alive() { local pid; pid=$(cat "$D/$1.pid" 2>/dev/null) && [ -n "$pid" ] && running "$pid" "$1"; }
# stop NAME: TERM, wait up to 15 s, then KILL; forget the pid file either way. Polls the
# pid, not the file: slurmdbd and slurmctld delete their pid files before they are gone.
stop() {
  local pid
  pid=$(cat "$D/$1.pid" 2>/dev/null)
  if [ -n "$pid" ] && running "$pid" "$1"; then
    kill -TERM "$pid"
    for _ in $(seq 60); do running "$pid" "$1" || break; sleep 0.25; done
    if running "$pid" "$1"; then
      echo "stop-local-slurm: $1 ($pid) ignored TERM for 15 s; sending KILL" >&2
      kill -KILL "$pid"
    fi
    echo "stop-local-slurm: stopped $1 (pid $pid)"
  fi
  rm -f "$D/$1.pid"
}

# Cancel the cluster's jobs first, so that no job outlives slurmd (KillWait=5).
if alive slurmctld && squeue -h -o %i 2>/dev/null | grep -q .; then
  scancel --full --partition=debug 2>/dev/null
  for _ in $(seq 30); do squeue -h -t R,CG -o %i 2>/dev/null | grep -q . || break; sleep 0.5; done
fi

stop slurmd
stop slurmctld
stop slurmdbd
if [ $PURGE = 1 ] && ours "$DBDCONF" && db=$(conf_value "$DBDCONF" StorageLoc) && [ -n "$db" ] &&
  mariadb-admin ping >/dev/null 2>&1; then
  # (if MariaDB is down, the next cold start drops the database instead)
  mariadb -e "DROP DATABASE IF EXISTS $db" && echo "stop-local-slurm: dropped database $db"
fi
stop mariadbd
stop munged

if [ $PURGE = 1 ]; then
  case "$D" in
    /?*) ;;
    *) echo "stop-local-slurm: refusing to purge '$D' (not an absolute path below /)" >&2; exit 1 ;;
  esac
  rm -rf "$D"
  for f in "$CONF" "$DBDCONF"; do if ours "$f"; then rm -f "$f"; fi; done
  echo "stop-local-slurm: purged $D and the configs written by start-local-slurm.sh"
fi
exit 0
