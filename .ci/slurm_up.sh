#!/usr/bin/env bash
# Bring up a real one-node SLURM cluster on this machine (Debian's slurm-wlm + munge), for the SLURM
# test (tests/test_slurm.py). Runs as root, needs no systemd: the daemons are started by hand and write
# their PIDs to the files below, so that .ci/slurm_down.sh stops exactly them.
#
# The cluster is the "light" setup of ../shared/notes/slurm.md: no accounting database, so the profile
# must ask the plugin for squeue-based status checks, and finished jobs stay in the controller's memory
# (squeue, scontrol show job) for MinJobAge = 1 hour, long enough for a test to inspect all its jobs.
# The node declares two GPUs as a generic resource with no devices behind them: SLURM then schedules
# `--gpus=1` requests as a GPU cluster does and sets CUDA_VISIBLE_DEVICES (the jobs run on the CPU).
set -euo pipefail

HOST=$(hostname -s)
bash "$(dirname "$0")/slurm_down.sh" >/dev/null  # daemons of an earlier bring-up, if any, by their PIDs
export DEBIAN_FRONTEND=noninteractive

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >>/etc/hosts  # SlurmctldHost must resolve

rm -rf /var/spool/slurmctld  # a fresh cluster: no node state (e.g. a drain) carried over from an earlier run
mkdir -p /etc/slurm /var/log/slurm /var/spool/slurmctld /var/spool/slurmd /run/munge
chown slurm:slurm /var/spool/slurmctld /var/log/slurm
chown munge:munge /run/munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key  # Debian's postinst makes one
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key

CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # leave 1 GB to the host
cat >/etc/slurm/slurm.conf <<EOF
# Written by .ci/slurm_up.sh: a throw-away one-node cluster for CI.
ClusterName=ci
SlurmctldHost=$HOST
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
MinJobAge=3600
DefMemPerCPU=1000
GresTypes=gpu
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
# a GPU gres needs character devices to count; two /dev/null look-alikes stand in for /dev/nvidia[01]
for i in 0 1; do [ -c /run/slurm-ci-gpu$i ] || mknod /run/slurm-ci-gpu$i c 1 3; done
cat >/etc/slurm/gres.conf <<EOF
NodeName=$HOST Name=gpu File=/run/slurm-ci-gpu[0-1]
EOF

runuser -u munge -- /usr/sbin/munged  # PID in /run/munge/munged.pid
/usr/sbin/slurmctld
/usr/sbin/slurmd

state=none
for _ in $(seq 60); do  # up to ~30 s
  for pidfile in /run/munge/munged.pid /run/slurmctld.pid /run/slurmd.pid; do
    if [ -s "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then state="dead: $pidfile"; break 2; fi
  done
  state=$(timeout 5 sinfo -h -N -o %t 2>/dev/null | head -1 || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "$state" != idle ]; then
  echo "slurm_up: node state is '$state', not idle" >&2
  tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  exit 1
fi
echo "slurm_up: one-node cluster 'ci' up on $HOST ($CPUS CPUs, $MEM_MB MB, 2 GPUs as gres), partition ci"
