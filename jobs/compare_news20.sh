#!/usr/bin/env bash
# mpips vs scikit-learn (LogisticRegression, SGDClassifier) on news20.binary:
# wall time to reach the same test AUC, measured in one run, printed as a table.
#   jobs/compare_news20.sh [--target 0.985] [--repeat 3] [--np 4]
# Converts ../shared/data/news20.binary.* into data/news20{,-test} if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
SHARED=${MPIPS_SHARED_DATA:-../shared/data}
for pair in "news20.binary.train:news20" "news20.binary.test:news20-test"; do
    src=${pair%%:*} dst=${pair##*:}
    if [[ ! -f data/$dst/manifest.json ]]; then
        python -m data_tools convert "$SHARED/$src.libsvm.gz" -o "data/$dst" \
            --rows-per-partition 1500 --overwrite
    fi
done
exec python -m mpips.bench.linear_compare --shared "$SHARED" "$@"
