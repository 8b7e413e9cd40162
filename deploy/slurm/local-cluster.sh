#!/usr/bin/env bash
# A real one-node SLURM on this machine, from the distribution's packages (Debian/Ubuntu),
# for trying `headplast sweep --engine slurm` and for its tests. Run as root. The tests use a SLURM
# that is up; they run this script themselves only with HEADPLAST_TEST_START_SLURM=1 (as .ci/run
# sets), never unasked, and otherwise skip saying so.
#
#   deploy/slurm/local-cluster.sh start    install if needed, write the config, start munge + slurmctld + slurmd
#   deploy/slurm/local-cluster.sh status   is it up? (sinfo)
#   deploy/slurm/local-cluster.sh stop     stop the three daemons (the config stays)
#
# The node gets this machine's cores and memory, one partition `local` (the default).
# SlurmUser=root, ProctrackType=proctrack/linuxproc and TaskPlugin=task/none need no cgroup
# set-up (containers usually have none); without accounting storage `sacct` is empty, which
# submitit only warns about.
set -euo pipefail

CONF_DIR=/etc/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "local-cluster.sh: must run as root (it installs packages and starts daemons)" >&2
    exit 2
  fi
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
      && command -v sbatch >/dev/null; then
    return
  fi
  if ! command -v apt-get >/dev/null; then
    echo "local-cluster.sh: slurmctld/slurmd/munge are missing and there is no apt-get to install them" >&2
    exit 3
  fi
  echo "installing slurmctld slurmd slurm-client munge ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # MiB, some left for the OS
  mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
  cat > "$CONF_DIR/slurm.conf" <<CONF
# written by headplast deploy/slurm/local-cluster.sh: one node, this machine
ClusterName=headplast-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
KillWait=5
MinJobAge=3600
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  rm -f "$CONF_DIR/cgroup.conf"  # none: task/none + proctrack/linuxproc need no cgroups
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 0400 /etc/munge/munge.key
  if ! pgrep -x munged >/dev/null; then
    if id munge >/dev/null 2>&1; then
      su -s /bin/sh munge -c "/usr/sbin/munged" || /usr/sbin/munged --force
    else
      /usr/sbin/munged --force
    fi
  fi
}

wait_idle() {
  for _ in $(seq 1 60); do
    if sinfo -h -o "%T" 2>/dev/null | grep -qE "idle|mixed|allocated"; then
      return 0
    fi
    sleep 1
  done
  echo "local-cluster.sh: the node did not become idle; see $LOG_DIR/slurmctld.log and slurmd.log" >&2
  sinfo >&2 || true
  exit 4
}

start() {
  need_root
  install_packages
  write_config
  start_munge
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  wait_idle
  scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
  echo "slurm is up: partition 'local', node $(hostname -s), $(nproc) cores"
  sinfo
}

stop() {
  need_root
  for d in slurmd slurmctld munged; do
    pkill -x "$d" 2>/dev/null || true
  done
  for _ in $(seq 1 20); do
    pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
    sleep 0.5
  done
  echo "slurm stopped"
}

status() {
  if pgrep -x slurmctld >/dev/null && sinfo -h >/dev/null 2>&1; then
    sinfo
    squeue
    exit 0
  fi
  echo "slurm is not running (start it with: $0 start)"
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 64 ;;
esac
