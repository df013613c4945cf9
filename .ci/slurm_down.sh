#!/usr/bin/env bash
# Stop the daemons that .ci/slurm_up.sh started, by the PIDs they wrote, and remove the cluster's
# configuration: with SLURM's tools installed but no controller, every `scontrol` call (which the
# Snakemake SLURM plugin makes at start-up) would wait ~10 s for an answer; without a configuration
# it fails at once.
set -uo pipefail

for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
  [ -s "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  rm -f "$pidfile"
done
rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf
echo "slurm_down: SLURM daemons stopped"
