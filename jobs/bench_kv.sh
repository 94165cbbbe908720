#!/usr/bin/env bash
# The kv benchmark matrix of the performance issue, in one go:
#   1+1 and 2+2 ranks (servers+workers), vdim 1 and 8, random and dense keys,
#   with and without key caching, next to raw MPI and the hand-written
#   pickled-dict server; then small requests with a window in flight.
# Prints every table and a summary of the target figures; JSON lines go to
# ${OUT:-runs/bench_kv.jsonl}.
#   jobs/bench_kv.sh            # the whole matrix (several minutes)
#   QUICK=1 jobs/bench_kv.sh    # 1+1, vdim 1, random keys only
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_mpi_yield_when_idle="${OMPI_MCA_mpi_yield_when_idle:-1}"
out="${OUT:-runs/bench_kv.jsonl}"
mkdir -p "$(dirname "$out")"
: > "$out"
cache=(-o 'filters.push=["key_cache"]' -o 'filters.pull=["key_cache"]')
run() {  # ranks servers extra...
    local n=$1 s=$2; shift 2
    echo "== mpiexec -n $n: $s server(s), $((n - 1 - s)) worker(s) $*"
    timeout 900 mpiexec -n "$n" --oversubscribe python -m mpips bench kv --servers "$s" \
        --keys 1000000 --json "$out" "$@" | grep -av "^mpips: "
}
if [ -n "${QUICK:-}" ]; then layouts=("3 1"); vdims=(1); kinds=(random)
else layouts=("3 1" "5 2"); vdims=(1 8); kinds=(random dense); fi
for layout in "${layouts[@]}"; do
    for vdim in "${vdims[@]}"; do
        for kind in "${kinds[@]}"; do
            # shellcheck disable=SC2086
            run $layout --vdim "$vdim" --keys-kind "$kind" -o bench.naive_max_keys=100000
            # shellcheck disable=SC2086
            run $layout --vdim "$vdim" --keys-kind "$kind" -o bench.naive_max_keys=0 \
                -o job.name=key-cache "${cache[@]}"
        done
    done
done
run 3 1 --keys 1000 --window 16 -o bench.naive_max_keys=0 -o job.name=window16
python - "$out" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def pick(**want):
    return [r for r in rows if all(r.get(k) == v for k, v in want.items())]
print("summary (1 server + 1 worker unless said):")
for label, want in [
        ("pushpull 1e6 random vdim 1, no caching", dict(op="pushpull", keys=10**6, vdim=1,
                                                         workers=1, keys_kind="random",
                                                         filters=[])),
        ("pushpull 1e6 random vdim 1, key caching", dict(op="pushpull", keys=10**6, vdim=1,
                                                          workers=1, keys_kind="random",
                                                          filters=["key_cache"])),
        ("1e3-key pushpull, window 16", dict(op="pushpull", keys=1000, window=16, workers=1))]:
    for r in pick(**want):
        print(f"  {label}: {r['keys_per_s'] / 1e6:.1f} M keys/s, {r['ratio']:.0%} of raw MPI")
for r in pick(op="pushpull", keys=100000, workers=1, vdim=1, keys_kind="random"):
    if "speedup_vs_naive" in r:
        print(f"  pushpull 1e5 vs the pickled-dict server: {r['speedup_vs_naive']:.0f}x")
PY
