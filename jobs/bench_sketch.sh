#!/usr/bin/env bash
# Count-min sketch throughput: inserts/s for 1, 2 and 4 workers with 1 and 2
# servers, every run's metrics appended to one JSON lines file, then a table.
#
#   jobs/bench_sketch.sh [RESULTS.jsonl] [train options: -o sketch.zipf_s=1.3 ...]
#
# The stream is the same total (sketch.zipf_items split over the workers), so
# runs differ only in parallelism. Each line also gives where the time went:
# worker seconds reading+hashing, aggregating, sending, waiting for acks, and
# the servers' update seconds (summed over ranks). The ranks are started by
# `python -m mpips run` (it oversubscribes when ranks outnumber cores);
# MPIPS_RUN_ARGS adds its options (see jobs/demo.sh).
set -euo pipefail
out=runs/bench-sketch.jsonl
if (($# > 0)) && [[ $1 != -* ]]; then out=$1; shift; fi
mkdir -p "$(dirname "$out")"
[[ -z ${MPIEXEC:-}${MPIEXEC_OPTS:-} ]] ||
    echo "$0: MPIEXEC and MPIEXEC_OPTS are no longer read: set MPIPS_RUN_ARGS (--mpi-arg=...)" >&2
total=$(python -c "import tomllib; print(tomllib.load(open('jobs/sketch_bench.toml','rb'))['sketch']['zipf_items'])")
run_dir=$(mktemp -d)
for servers in 1 2; do
    for workers in 1 2 4; do
        np=$((1 + servers + workers))
        # shellcheck disable=SC2086  # MPIPS_RUN_ARGS is a list of options
        timeout 600 python -m mpips run -n "$np" ${MPIPS_RUN_ARGS:-} \
            jobs/sketch_bench.toml --servers "$servers" \
            -o "sketch.zipf_items=$((total / workers))" -o "job.output=$run_dir/s$servers-w$workers" \
            "$@" | grep '^sketch: [0-9]' || true
        cat "$run_dir/s$servers-w$workers/metrics.jsonl" >>"$out"
    done
done
rm -rf "$run_dir"
python - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][-6:]
print(f"{'servers':>7} {'workers':>7} {'inserts/s':>12} {'keys/insert':>11} {'read':>6} "
      f"{'aggr':>6} {'push':>6} {'wait':>6} {'server':>6}  (seconds summed over ranks)")
for r in rows:
    print(f"{r['servers']:>7} {r['workers']:>7} {r['inserts_per_s']:>12.4g} "
          f"{r['pushed_keys'] / r['inserts']:>11.3f} {r['t_read']:>6.2f} {r['t_aggregate']:>6.2f} "
          f"{r['t_push']:>6.2f} {r['t_wait']:>6.2f} {r['server_update_seconds']:>6.2f}")
PY

# Recovery: 3 servers with replication 1 under ULFM (mpips run adds
# --with-ft ulfm on Open MPI 5); rank 2 (server 1) is SIGKILLed once the
# stream is under way; the job must go on and finish.
if [ -z "${SKIP_KILL:-}" ]; then
    kill_dir=$(mktemp -d)
    echo "recovery: 1 scheduler, 3 servers (replication 1), 2 workers; server 1 killed mid-stream"
    # shellcheck disable=SC2086  # MPIPS_RUN_ARGS is a list of options
    python -m mpips.bench.chaos --rank 2 --after "inserts" --events "$kill_dir/events.jsonl" -- \
        timeout 600 python -m mpips run -n 6 ${MPIPS_RUN_ARGS:-} \
        jobs/sketch_bench.toml --servers 3 -o layout.replication=1 \
        -o "sketch.zipf_items=$((total / 2))" -o job.progress_interval=0.2 \
        -o sketch.report_interval=0.2 -o "job.output=$kill_dir" "$@" \
        | grep -a '^sketch: [0-9]\|^chaos\|survived\|failed'
    rm -rf "$kill_dir"
fi
