#!/usr/bin/env bash
# A single-node Slurm cluster and a PostgreSQL server in one temporary folder, for the tests
# (and for trying the cluster path on one machine):
#
#   scripts/cluster.sh up [DIR]     installs what is missing (Debian: slurmctld, slurmd,
#                                   slurm-client, munge, postgresql), starts munged, slurmctld,
#                                   slurmd and postgres in DIR, waits until they answer
#   scripts/cluster.sh env [DIR]    prints the variables that point clients and tests at them
#   scripts/cluster.sh down [DIR]   stops them all and removes DIR
#
# DIR defaults to $MODALBENCH_CLUSTER_DIR, else /tmp/modalbench-cluster. Nothing outside DIR is
# written (no /etc/slurm, no /etc/munge): the Slurm configuration is DIR/slurm.conf, given to
# every Slurm command with SLURM_CONF; munged and postgres keep their sockets, keys, logs and
# data in DIR. The one node is called `mbnode`, at 127.0.0.1, with this machine's CPUs and two
# fake GPUs (`gres/gpu:2`, declared over character devices made in DIR/dev) so that
# `--gres=gpu:N` jobs schedule on a machine without GPUs. Jobs run as the calling user.
#
# As root (CI, containers), munged runs as the `munge` user and postgres as `postgres`, as their
# packages expect; otherwise everything runs as the current user.
set -euo pipefail

cmd="${1:-}"
DIR="${2:-${MODALBENCH_CLUSTER_DIR:-/tmp/modalbench-cluster}}"
PG_PORT="${MODALBENCH_PG_PORT:-15432}"
CTLD_PORT="${MODALBENCH_SLURMCTLD_PORT:-16817}"
SLURMD_PORT="${MODALBENCH_SLURMD_PORT:-16818}"
NODE=mbnode

say() { printf '\033[1m[cluster]\033[0m %s\n' "$*" >&2; }
die() { printf 'cluster: %s\n' "$*" >&2; exit 1; }

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$d" ] || die "PostgreSQL's server binaries are not installed (/usr/lib/postgresql/*/bin)"
  echo "$d"
}

# as_user USER CMD...: runs CMD as USER when we are root, else as ourselves
as_user() {
  local user="$1"; shift
  if [ "$(id -u)" = 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
  [ ${#missing[@]} -eq 0 ] && return
  say "installing ${missing[*]} (Debian packages)"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
    || { "${sudo[@]}" apt-get update >/dev/null && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
  # the packages' own services are not used (and may not run without systemd)
  for svc in munge slurmctld slurmd postgresql; do
    "${sudo[@]}" service "$svc" stop >/dev/null 2>&1 || true
  done
}

print_env() {
  cat <<EOF
export SLURM_CONF=$DIR/slurm.conf
export MODALBENCH_TEST_SLURM_CONF=$DIR/slurm.conf
export MODALBENCH_TEST_DATABASE_URL=postgres://$(pg_user)@127.0.0.1:$PG_PORT/modalbench
EOF
}

pg_user() { if [ "$(id -u)" = 0 ]; then echo postgres; else id -un; fi; }

wait_for() {
  local what="$1" tries="$2"; shift 2
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "$what did not come up; its log is in $DIR"
}

up() {
  install_packages
  if [ -f "$DIR/up" ]; then
    if SLURM_CONF="$DIR/slurm.conf" scontrol ping >/dev/null 2>&1 \
      && "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
      say "already up in $DIR"
      print_env
      return
    fi
    say "$DIR was up once but does not answer now: starting again"
  fi
  down_quiet
  mkdir -p "$DIR"/{munge,slurm/state,slurm/spool,slurm/log,dev,pg-sock}
  chmod 755 "$DIR"
  local me cpus mem
  me=$(id -un)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

  # --- munge: its own key and socket ---------------------------------------------------------
  local munge_user="$me"
  [ "$(id -u)" = 0 ] && munge_user=munge
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 700 "$DIR/munge"
  chmod 400 "$DIR/munge/munge.key"
  chown -R "$munge_user" "$DIR/munge"
  as_user "$munge_user" munged --force \
    --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
  wait_for munged 40 munge -S "$DIR/munge/munge.socket" -n
  chmod 755 "$DIR/munge"

  # --- Slurm: one node, two fake GPUs ---------------------------------------------------------
  for i in 0 1; do
    [ -e "$DIR/dev/gpu$i" ] || mknod "$DIR/dev/gpu$i" c 1 3 2>/dev/null \
      || die "cannot make the fake GPU device $DIR/dev/gpu$i (mknod needs root or CAP_MKNOD)"
  done
  cat > "$DIR/slurm.conf" <<EOF
ClusterName=modalbench
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$me
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/slurm/state
SlurmdSpoolDir=$DIR/slurm/spool/%n
SlurmctldPidFile=$DIR/slurm/slurmctld.pid
SlurmdPidFile=$DIR/slurm/slurmd.pid
SlurmctldLogFile=$DIR/slurm/log/slurmctld.log
SlurmdLogFile=$DIR/slurm/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/slurm/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
KillWait=5
SlurmdTimeout=30
InactiveLimit=0
NodeName=$NODE NodeHostname=$(hostname) NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$DIR/gres.conf" <<EOF
NodeName=$NODE Name=gpu File=$DIR/dev/gpu[0-1]
EOF
  export SLURM_CONF="$DIR/slurm.conf"
  # the daemons run as this user; slurmd needs root to run jobs as other users, which these
  # tests do not ask of it
  slurmctld -c -i
  slurmd -N "$NODE"
  wait_for slurmctld 60 scontrol ping
  wait_for "the node $NODE" 60 bash -c "sinfo --noheader -n $NODE -o %T | grep -Eq '^(idle|mixed|allocated)'"

  # --- PostgreSQL -----------------------------------------------------------------------------
  local pg_user bin
  pg_user=$(pg_user)
  bin=$(pg_bin)
  mkdir -p "$DIR/pg"
  chown -R "$pg_user" "$DIR/pg" "$DIR/pg-sock"
  as_user "$pg_user" "$bin/initdb" -D "$DIR/pg/data" -A trust -U "$pg_user" -E UTF8 >"$DIR/pg/initdb.log"
  as_user "$pg_user" "$bin/pg_ctl" -D "$DIR/pg/data" -l "$DIR/pg/postgres.log" -w -t 60 \
    -o "-p $PG_PORT -k $DIR/pg-sock -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null
  as_user "$pg_user" "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$pg_user" modalbench

  touch "$DIR/up"
  say "up in $DIR: Slurm (node $NODE, gres/gpu:2) and PostgreSQL on 127.0.0.1:$PG_PORT"
  print_env
}

# stops whatever runs from DIR, quietly
down_quiet() {
  [ -d "$DIR" ] || return 0
  if [ -f "$DIR/slurm.conf" ]; then
    SLURM_CONF="$DIR/slurm.conf" scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
  fi
  for pidfile in "$DIR/slurm/slurmd.pid" "$DIR/slurm/slurmctld.pid" "$DIR/munge/munged.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  if [ -f "$DIR/pg/data/postmaster.pid" ]; then
    as_user "$(pg_user)" "$(pg_bin)/pg_ctl" -D "$DIR/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  # slurmstepd processes of jobs still running
  pkill -f "slurmstepd.*$NODE" 2>/dev/null || true
  sleep 0.5
  rm -rf "$DIR"
}

case "$cmd" in
  up) up ;;
  env) [ -f "$DIR/up" ] || die "nothing is up in $DIR (scripts/cluster.sh up)"; print_env ;;
  down) down_quiet; say "down" ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
