#!/usr/bin/env bash
# Kill a server mid-run, several times, and print detection, failover and
# repair times (from the kill) with their medians.
#   jobs/bench_failover.sh [RUNS] [extra -o overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"; shift || true
if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_mpi_yield_when_idle="${OMPI_MCA_mpi_yield_when_idle:-1}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for i in $(seq "$runs"); do
    timeout 300 mpiexec -n 6 --oversubscribe --with-ft ulfm python -m mpips bench failover \
        --servers 3 -o layout.replication=1 -o job.output="$out/run$i" \
        -o failover.json="$out/times.jsonl" "$@" | grep -a "^bench failover"
done
python - "$out/times.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{len(rows)} runs, 3 servers, 2 workers, replication 1 (times from the SIGKILL):")
for key in ("detection_s", "failover_s", "repair_s"):
    vals = [r[key] * 1000 for r in rows if r[key] is not None]
    print(f"  {key[:-2]:9s} median {statistics.median(vals):6.1f} ms  "
          f"min {min(vals):6.1f}  max {max(vals):6.1f}")
PY
