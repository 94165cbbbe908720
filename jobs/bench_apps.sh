#!/usr/bin/env bash
# End-to-end numbers of the apps (issue 9): examples/s of sparse logistic
# regression on news20 binary (real data, from ../shared/data; skipped when
# absent) and on synthetic CTR data (made here: 600k rows x 20 fields over
# 1e5 ids, FTRL), with 1 server + 2 workers and 2 servers + 2 workers, each
# run REPEAT times (default 2). Examples/s = training examples over the whole
# job's wall time (evaluation after each epoch included), from the final line
# of metrics.jsonl; AUC is the final test AUC. Every mpiexec has a timeout.
#   jobs/bench_apps.sh [REPEAT]          # JSON lines: ${OUT:-runs/bench_apps.jsonl}
set -euo pipefail
cd "$(dirname "$0")/.."
repeat=${1:-2}
out=${OUT:-runs/bench_apps.jsonl}
mkdir -p "$(dirname "$out")"
: > "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
SHARED=${MPIPS_SHARED_DATA:-../shared/data}
jobs=(ctr)
if [[ -f $SHARED/news20.binary.train.libsvm.gz ]]; then jobs=(news20 ctr)
else echo "news20: $SHARED/news20.binary.train.libsvm.gz absent, skipped"; fi
for job in "${jobs[@]}"; do
    for layout in "4 1" "5 2"; do
        read -r np servers <<<"$layout"
        mkdir -p runs/bench_apps
        for ((r = 1; r <= repeat; r++)); do
            dir=runs/bench_apps/$job-$servers-$r
            rm -rf "$dir"
            MPIPS_NP=$np timeout 600 jobs/linear.sh "$job" -o layout.servers="$servers" \
                -o job.output="$dir" >"$dir.log" 2>&1 || { tail -20 "$dir.log"; exit 1; }
            python - "$dir/metrics.jsonl" "$job" "$servers" "$((np - 1 - servers))" "$out" <<'PY'
import json, sys
path, job, servers, workers, out = sys.argv[1:]
final = [json.loads(x) for x in open(path) if '"final": true' in x][-1]
rec = {"job": job, "servers": int(servers), "workers": int(workers),
       "examples_per_s": final["train_examples_per_s"], "auc": final["auc"],
       "job_seconds": final["job_seconds"], "examples": final["examples"]}
open(out, "a").write(json.dumps(rec) + "\n")
print(f"{job:7s} {servers} server(s) + {workers} workers: {rec['examples_per_s']:10.4g} "
      f"examples/s, test AUC {rec['auc']:.4f}, {rec['examples']} examples in "
      f"{rec['job_seconds']:.1f} s", flush=True)
PY
        done
    done
done
