#!/usr/bin/env bash
# Start reatt's local test cluster: a real single-node Slurm on this machine, no systemd.
#   munged -> MariaDB -> slurmdbd -> slurmctld -> slurmd, then wait until the node is up.
# This machine is both the controller and the only compute node (partition `debug`).
# Accounting (MariaDB + slurmdbd, so that `sacct` works) is on unless
# REATT_SLURM_ACCOUNTING=0. Idempotent: daemons that already run are left alone.
#
# Usage (as root):  scripts/slurm/install-slurm.sh    # once: the Debian packages
#                   scripts/slurm/start-local-slurm.sh
#                   scripts/slurm/stop-local-slurm.sh [--purge]
# Env knobs (all optional; a changed knob needs a stop first):
#   REATT_SLURM_DIR         state, spool, logs, pid files   (default /var/tmp/reatt-slurm)
#   REATT_SLURM_ACCOUNTING  1: MariaDB + slurmdbd (default) / 0: no sacct, faster start
#   REATT_SLURM_TIMEOUT     seconds to wait for each daemon (default 60)
#   REATT_SLURM_MINJOBAGE   seconds scontrol/squeue keep a finished job (default 300)
#   REATT_SLURM_CRED_EXPIRE seconds before a requeued job may run again (default 10)
set -euo pipefail

D=${REATT_SLURM_DIR:-/var/tmp/reatt-slurm}
ACCT=${REATT_SLURM_ACCOUNTING:-1}
TIMEOUT=${REATT_SLURM_TIMEOUT:-60}
CONF=/etc/slurm/slurm.conf          # the default path, so clients need no SLURM_CONF
DBDCONF=/etc/slurm/slurmdbd.conf
DB=reatt_slurm_acct                 # MariaDB database of slurmdbd; dropped by --purge
NODE=$(hostname -s)
MARK="# written by reatt scripts/slurm/start-local-slurm.sh; removed by stop-local-slurm.sh --purge"
T0=$(date +%s.%N)

die() { echo "start-local-slurm: $*" >&2; exit 1; }
# alive NAME: $D/NAME.pid holds the pid of a live process called NAME. A zombie does not
# count (PID 1 here reaps late, and kill -0 succeeds on zombies), nor a reused pid.
alive() {
  local pid
  pid=$(cat "$D/$1.pid" 2>/dev/null) && [ -n "$pid" ] &&
    ps -o stat=,comm= -p "$pid" 2>/dev/null | grep -Eq "^[^Z][^[:space:]]*[[:space:]]+$1\$"
}
# wait_for WHAT CMD...: run CMD every 0.2 s until it succeeds; give up after TIMEOUT s
wait_for() {
  local what=$1 end=$((SECONDS + TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then
      echo "start-local-slurm: $what not ready after ${TIMEOUT}s; last log lines in $D/log:" >&2
      tail -n 20 "$D"/log/*.log "$D"/log/mysql/*.log >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.2
  done
}
# write_conf FILE TEXT: write a config this script owns. Never touches a file without the
# marker line, and never changes one under running daemons (they would disagree).
write_conf() {
  if [ -e "$1" ] && ! grep -qxF "$MARK" "$1"; then
    die "$1 exists and was not written by this script; not touching it (move it away first)"
  fi
  [ "$(cat "$1" 2>/dev/null)" = "$2" ] && return 0
  for d in slurmctld slurmd slurmdbd; do
    if alive $d; then die "$1 would change while $d runs: run stop-local-slurm.sh first"; fi
  done
  printf '%s\n' "$2" >"$1"
}
node_up() { [[ "$(sinfo -h -N -n "$NODE" -o %T)" =~ ^(idle|mixed|allocated|completing)$ ]]; }
cluster_registered() { sacctmgr -n -P list cluster local format=cluster | grep -qx local; }

[ "$(id -u)" = 0 ] || die "must run as root"
need="slurmctld slurmd sbatch munged mungekey"
if [ "$ACCT" = 1 ]; then need+=" slurmdbd sacctmgr mariadbd mariadb mariadb-admin"; fi
for c in $need; do
  command -v "$c" >/dev/null || die "$c not found: run scripts/slurm/install-slurm.sh (with the same REATT_SLURM_ACCOUNTING)"
done
# A cold start (no controller state yet) starts job ids at 1 again.
cold=0
[ -n "$(ls -A "$D/state" 2>/dev/null)" ] || cold=1
mkdir -p "$D/state" "$D/spool" "$D/log" /etc/slurm

# --- configs first: refuse to change them under running daemons ---
if [ "$ACCT" = 1 ]; then
  # MariaDB's root account over its unix socket ("localhost"): no password anywhere.
  write_conf "$DBDCONF" "$MARK
DbdHost=localhost
SlurmUser=root
AuthType=auth/munge
PidFile=$D/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=$DB"
  chmod 0600 "$DBDCONF"   # slurmdbd insists on this
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none"
fi

write_conf "$CONF" "$MARK
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$ACCT_LINES
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=${REATT_SLURM_MINJOBAGE:-300}
# Fast for tests: a requeued job may run again after cred_expire s (default 120),
# the scheduler runs every 5 s (default 60), and a cancelled job is killed 5 s after TERM.
AuthInfo=cred_expire=${REATT_SLURM_CRED_EXPIRE:-10}
SchedulerParameters=sched_interval=5,bf_interval=5,batch_sched_delay=0
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$(free -m | awk '/^Mem:/{print $2}') State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP"

# --- munge: the key (owned by munge, 0400, in a 0700 dir), then munged as user munge ---
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then   # no working munged
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  wait_for "munged pid file" test -s /run/munge/munged.pid
  cp /run/munge/munged.pid "$D/munged.pid"   # ours, so stop-local-slurm.sh may stop it
  wait_for munged bash -c 'munge -n </dev/null | unmunge'
fi

# --- accounting: MariaDB (unless one already answers on the default socket), slurmdbd ---
if [ "$ACCT" = 1 ]; then
  if ! mariadb-admin ping >/dev/null 2>&1; then
    install -d -o mysql -g mysql /run/mysqld "$D/log/mysql"
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    setsid mariadbd --user=mysql --datadir=/var/lib/mysql --bind-address=127.0.0.1 \
      --log-error="$D/log/mysql/error.log" </dev/null >/dev/null 2>&1 &
    echo $! >"$D/mariadbd.pid"
    wait_for MariaDB mariadb-admin ping
  fi
  if ! alive slurmdbd; then
    # Job ids restart at 1 after a cold start: records left from an earlier cluster (one
    # purged while MariaDB was down, or killed) would then answer `sacct -j ID` wrongly.
    if [ $cold = 1 ]; then mariadb -e "DROP DATABASE IF EXISTS $DB"; fi
    slurmdbd
    wait_for slurmdbd sacctmgr -n list cluster
  fi
fi

# --- controller and node (each forks and writes its pid file under $D) ---
alive slurmctld || slurmctld
alive slurmd || slurmd -N "$NODE"
wait_for "node $NODE" node_up
# slurmctld registers the cluster in slurmdbd by itself (no sacctmgr add cluster needed)
if [ "$ACCT" = 1 ]; then wait_for "registration of cluster local in slurmdbd" cluster_registered; fi

echo "start-local-slurm: up in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s:" \
  "node $NODE ($(nproc) CPUs), partition debug, accounting=$ACCT, logs in $D/log"
