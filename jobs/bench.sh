#!/usr/bin/env bash
# The key-value benchmark at one and two servers, results appended as JSON lines:
#
#   jobs/bench.sh [RESULTS.jsonl] [bench kv options ...]
#
#   jobs/bench.sh                                   # runs/bench-kv.jsonl
#   jobs/bench.sh runs/kv.jsonl --keys 100000 --vdim 8 --repeat 5
#
# Each run prints kv throughput next to plain MPI moving the same bytes: read
# the kv/MPI ratio, not the absolute numbers (they depend on the machine).
#
# Runs on a workstation (MPIPS_NP ranks, default 4) and inside a Slurm
# allocation (salloc, or an sbatch script: SLURM_NTASKS ranks). Launcher,
# Open MPI settings and the other variables: see slurm/mpips-env.sh.
set -euo pipefail

# Find the checkout: this file's folder, or, when sbatch runs a spooled copy of
# it, the path sbatch was given (scontrol knows it).
find_home() {
    local d cmd=""
    if [[ -n ${SLURM_JOB_ID:-} ]]; then
        cmd=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -n 1)
    fi
    for d in "${MPIPS_HOME:-}" "$(dirname "$0")/.." "${cmd:+$(dirname "$cmd")/..}" "${SLURM_SUBMIT_DIR:-.}"; do
        if [[ -n $d && -f $d/slurm/mpips-env.sh ]]; then (cd "$d" && pwd); return 0; fi
    done
    echo "error: cannot find slurm/mpips-env.sh: set MPIPS_HOME to the mpips checkout" >&2
    return 1
}
MPIPS_HOME=$(find_home)
# shellcheck source=slurm/mpips-env.sh
source "$MPIPS_HOME/slurm/mpips-env.sh"

out=runs/bench-kv.jsonl
if (($# > 0)) && [[ $1 != -* ]]; then out=$1; shift; fi
mkdir -p "$(dirname "$out")"

mpips_setup_env
mpips_launch_cmd
mpips_banner
ranks=$(mpips_ranks)
for servers in 1 2; do
    # 1 scheduler + servers + at least 1 worker.
    if ((ranks < servers + 2)); then
        mpips_log "skipping $servers server(s): needs at least $((servers + 2)) ranks, have $ranks"
        continue
    fi
    mpips_log "bench kv with $servers server(s) -> $out"
    "${MPIPS_LAUNCH[@]}" "$MPIPS_PYTHON" -m mpips bench kv --servers "$servers" --json "$out" "$@"
done
