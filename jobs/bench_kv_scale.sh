#!/usr/bin/env bash
# kv throughput as the job grows: 4, 16, 32 and 64 ranks (RANKS to change), a
# quarter of the ranks servers, the rest workers but the scheduler, each worker
# pushing and pulling 1e5-key requests (KEYS) with repeated lists, fresh lists
# and fresh lists by key set. Prints the aggregate keys/s and keys/s per worker
# and per rank at each size; JSON lines go to ${OUT:-runs/bench_kv_scale.jsonl}.
# On a machine with fewer cores than ranks the ranks share them: the per-rank
# figure then shows what sharing costs, not what one more machine would add.
#   jobs/bench_kv_scale.sh
#   RANKS="4 16" KEYS=10000 jobs/bench_kv_scale.sh
# MPIPS_RUN_ARGS: options of `mpips run` (see jobs/demo.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/bench_kv_scale.jsonl}"
keys="${KEYS:-100000}"
mkdir -p "$(dirname "$out")"
: > "$out"
for n in ${RANKS:-4 16 32 64}; do
    s=$(( n / 4 > 0 ? n / 4 : 1 ))
    echo "== $n ranks: $s server(s), $((n - 1 - s)) worker(s), $keys-key requests"
    # shellcheck disable=SC2086  # MPIPS_RUN_ARGS is a list of options
    timeout 1800 python -m mpips run -n "$n" ${MPIPS_RUN_ARGS:-} bench kv --servers "$s" \
        --keys "$keys" --min-keys "$keys" --repeat "${REPEAT:-50}" --json "$out" \
        -o bench.naive_max_keys=0 -o transport.timeout=600 | grep -av "^mpips: "
done
python - "$out" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("kv throughput by job size (pushpull; M keys/s; ranks = 1 scheduler + servers + workers)")
print(f"{'ranks':>5} {'servers':>7} {'workers':>7} {'lists':>9} {'aggregate':>10} "
      f"{'per worker':>10} {'per rank':>9}")
for r in rows:
    if r["op"] != "pushpull":
        continue
    ranks = 1 + r["servers"] + r["workers"]
    print(f"{ranks:5d} {r['servers']:7d} {r['workers']:7d} {r['lists']:>9} "
          f"{r['keys_per_s'] / 1e6:10.1f} {r['keys_per_s'] / r['workers'] / 1e6:10.2f} "
          f"{r['keys_per_s'] / ranks / 1e6:9.2f}")
PY
