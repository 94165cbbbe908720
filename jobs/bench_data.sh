#!/usr/bin/env bash
# Data path benchmark: libsvm conversion vs scikit-learn's load_svmlight_file,
# and reader throughput, on the same file in one run. Optional: synth ctr at
# scale with its peak RSS (BENCH_SYNTH_ROWS=10000000).
#   jobs/bench_data.sh [FILE]   (default: ../shared/data/news20.binary.train.libsvm.gz)
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=${1:-../shared/data/news20.binary.train.libsvm.gz}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python -m data_tools bench "$FILE"
ROWS=${BENCH_SYNTH_ROWS:-0}
if [ "$ROWS" -gt 0 ]; then
    OUT=$(mktemp -d)
    trap 'rm -rf "$OUT"' EXIT
    echo "synth ctr: $ROWS rows x 40 fields"
    /usr/bin/time -f "  wall %e s, peak RSS %M KiB" \
        python -m data_tools synth ctr --rows "$ROWS" --fields 40 -o "$OUT/ctr"
    du -sh "$OUT/ctr"
fi
