#!/usr/bin/env bash
# The kv benchmark matrix of the performance issue, in one go:
#   1+1 and 2+2 ranks (servers+workers), request sizes 1e3..1e7, vdim 1 and 8,
#   random and dense keys, with and without key caching, next to raw MPI and
#   the hand-written pickled-dict server (up to 1e5 keys); then 1e6-key
#   requests with two in flight, and 1e3-key requests with 16 in flight,
#   unbatched and batched (kv.coalesce_bytes).
# Prints every table and a summary of the target figures; JSON lines go to
# ${OUT:-runs/bench_kv.jsonl}.
#   jobs/bench_kv.sh            # the whole matrix (several minutes)
#   QUICK=1 jobs/bench_kv.sh    # 1+1, vdim 1, random keys only
# MPIPS_RUN_ARGS: options of `mpips run` (see jobs/demo.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/bench_kv.jsonl}"
mkdir -p "$(dirname "$out")"
: > "$out"
cache=(-o 'filters.push=["key_cache"]' -o 'filters.pull=["key_cache"]')
run() {  # ranks servers extra...
    local n=$1 s=$2; shift 2
    echo "== $n ranks: $s server(s), $((n - 1 - s)) worker(s) $*"
    # shellcheck disable=SC2086  # MPIPS_RUN_ARGS is a list of options
    timeout 900 python -m mpips run -n "$n" ${MPIPS_RUN_ARGS:-} bench kv --servers "$s" \
        --json "$out" "$@" | grep -av "^mpips: "
}
if [ -n "${QUICK:-}" ]; then layouts=("3 1"); vdims=(1); kinds=(random); max_keys=1000000
else layouts=("3 1" "5 2"); vdims=(1 8); kinds=(random dense); max_keys=10000000; fi
for layout in "${layouts[@]}"; do
    for vdim in "${vdims[@]}"; do
        for kind in "${kinds[@]}"; do
            # shellcheck disable=SC2086
            run $layout --keys "$max_keys" --vdim "$vdim" --keys-kind "$kind" \
                -o bench.naive_max_keys=100000
            # shellcheck disable=SC2086
            run $layout --keys "$max_keys" --vdim "$vdim" --keys-kind "$kind" \
                -o bench.naive_max_keys=0 -o job.name=key-cache "${cache[@]}"
        done
    done
done
run 3 1 --keys 1000000 --window 2 -o bench.naive_max_keys=0 -o job.name=window2 \
    "${cache[@]}"
run 3 1 --keys 1000000 --window 2 -o bench.naive_max_keys=0 -o job.name=window2
run 3 1 --keys 1000 --window 16 -o bench.naive_max_keys=0 -o job.name=window16
run 3 1 --keys 1000 --window 16 -o bench.naive_max_keys=0 -o job.name=window16-batched \
    --coalesce-bytes 65536
python - "$out" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def pick(**want):
    return [r for r in rows if all(r.get(k) == v for k, v in want.items())]
print("summary (1 server + 1 worker unless said; targets of issue 9 in brackets):")
def show(label, want, target=""):
    for r in pick(**want):
        print(f"  {label}: {r['keys_per_s'] / 1e6:.1f} M keys/s, {r['ratio']:.0%} of raw MPI"
              + (f" [{target}]" if target else ""))
base = dict(op="pushpull", keys=10**6, vdim=1, workers=1, keys_kind="random")
show("pushpull 1e6 random vdim 1, no caching", dict(base, filters=[], window=1),
     ">= 30 M keys/s")
show("pushpull 1e6 random vdim 1, no caching, window 2", dict(base, filters=[], window=2))
show("pushpull 1e6 random vdim 1, key caching", dict(base, filters=["key_cache"], window=1),
     ">= 60 M keys/s, >= 40% of raw")
show("pushpull 1e6 random vdim 1, key caching, window 2",
     dict(base, filters=["key_cache"], window=2), ">= 60 M keys/s, >= 40% of raw")
show("pushpull 1e7 random vdim 1, no caching", dict(base, keys=10**7, filters=[], window=1))
show("1e3-key pushpull, window 16", dict(op="pushpull", keys=1000, window=16, workers=1,
                                         coalesce_bytes=0), ">= 5 M keys/s")
show("1e3-key pushpull, window 16, batched", dict(op="pushpull", keys=1000, window=16,
                                                  workers=1, coalesce_bytes=65536))
for r in pick(op="pushpull", keys=100000, vdim=1, keys_kind="random"):
    if "speedup_vs_naive" in r:
        print(f"  pushpull 1e5, {r['servers']}+{r['workers']}, vs the pickled-dict server: "
              f"{r['speedup_vs_naive']:.0f}x [>= 20x]")
PY