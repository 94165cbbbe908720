#!/usr/bin/env bash
# Score a converted data set with a trained model:
#
#   jobs/predict.sh MODEL DATA_DIR OUT [more predict options ...]
#
#   jobs/predict.sh runs/news20/model.h5 data/news20-test runs/news20/predictions.txt
#
# Runs `python -m mpips predict --model MODEL --data DATA_DIR --out OUT` under
# `python -m mpips run`: on a workstation MPIPS_NP ranks (default 1), inside a
# Slurm allocation SLURM_NTASKS. MPIPS_RUN_ARGS, MPIPS_PYTHON: see jobs/train.sh.
set -euo pipefail

if (($# < 3)) || [[ $1 == -h || $1 == --help ]]; then
    echo "usage: jobs/predict.sh MODEL DATA_DIR OUT [options ...]" >&2
    exit 2
fi
model=$1 data=$2 out=$3
shift 3
[[ -e $model ]] || { echo "jobs/predict.sh: model '$model' not found" >&2; exit 2; }
[[ -f $data/manifest.json ]] || {
    echo "jobs/predict.sh: '$data' is not a converted data set (no manifest.json): run jobs/convert.sh first" >&2
    exit 2
}
mkdir -p "$(dirname "$out")"
export MPIPS_NP=${MPIPS_NP:-1}
# shellcheck disable=SC2086  # MPIPS_RUN_ARGS is a list of options
exec "${MPIPS_PYTHON:-python}" -m mpips run ${MPIPS_RUN_ARGS:-} \
    predict --model "$model" --data "$data" --out "$out" "$@"
