#!/usr/bin/env bash
# Kill a server mid-run, several times, and print detection, failover and
# repair times (from the kill) with their medians. 6 ranks under ULFM
# (`mpips run` adds --with-ft ulfm on Open MPI 5; MPIPS_RUN_ARGS: its options).
#   jobs/bench_failover.sh [RUNS] [extra -o overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"; shift || true
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for i in $(seq "$runs"); do
    # shellcheck disable=SC2086  # MPIPS_RUN_ARGS is a list of options
    timeout 300 python -m mpips run -n 6 ${MPIPS_RUN_ARGS:-} bench failover \
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
