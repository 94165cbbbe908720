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
# Ranks: SLURM_NTASKS inside a Slurm allocation (salloc, or an sbatch script),
# else MPIPS_NP (default 4). MPIPS_RUN_ARGS, MPIPS_PYTHON: see jobs/train.sh.
set -euo pipefail

out=runs/bench-kv.jsonl
if (($# > 0)) && [[ $1 != -* ]]; then out=$1; shift; fi
mkdir -p "$(dirname "$out")"

ranks=${SLURM_NTASKS:-${MPIPS_NP:-4}}  # what `mpips run` takes by default
for servers in 1 2; do
    # 1 scheduler + servers + at least 1 worker.
    if ((ranks < servers + 2)); then
        echo "jobs/bench.sh: skipping $servers server(s): needs at least $((servers + 2)) ranks, have $ranks" >&2
        continue
    fi
    echo "jobs/bench.sh: bench kv with $servers server(s) -> $out" >&2
    # shellcheck disable=SC2086  # MPIPS_RUN_ARGS is a list of options
    "${MPIPS_PYTHON:-python}" -m mpips run -n "$ranks" ${MPIPS_RUN_ARGS:-} \
        bench kv --servers "$servers" --json "$out" "$@"
done
