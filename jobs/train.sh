#!/usr/bin/env bash
# Train a job on a converted data directory:
#
#   jobs/train.sh JOB.toml [TRAIN_DIR [TEST_DIR]] [-o section.key=value ...]
#
#   jobs/train.sh jobs/demo.toml                       # the job file's own data
#   jobs/train.sh jobs/demo.toml data/news20 data/news20-test -o job.output=runs/news20
#
# TRAIN_DIR / TEST_DIR are folders written by `python -m data_tools convert`
# (each holds manifest.json); they become -o data.train=... / -o data.test=...
#
# Starts the ranks with `python -m mpips run`: on a workstation MPIPS_NP ranks
# (default 4), inside a Slurm allocation (salloc, or this file as the sbatch
# script) SLURM_NTASKS. MPIPS_RUN_ARGS adds options of `mpips run` (e.g.
# "--launcher srun"); MPIPS_PYTHON is the Python with mpips (default python).
set -euo pipefail

if (($# < 1)) || [[ $1 == -h || $1 == --help ]]; then
    echo "usage: jobs/train.sh JOB.toml [TRAIN_DIR [TEST_DIR]] [-o section.key=value ...]" >&2
    exit 2
fi
job=$1
shift
[[ -f $job ]] || { echo "jobs/train.sh: job file '$job' not found" >&2; exit 2; }
args=("$job")
# Positional data folders until the first option.
for key in data.train data.test; do
    if (($# > 0)) && [[ $1 != -* ]]; then
        [[ -f $1/manifest.json ]] || {
            echo "jobs/train.sh: '$1' is not a converted data set (no manifest.json): run jobs/convert.sh first" >&2
            exit 2
        }
        args+=(-o "$key=$1")
        shift
    fi
done
# shellcheck disable=SC2086  # MPIPS_RUN_ARGS is a list of options
exec "${MPIPS_PYTHON:-python}" -m mpips run ${MPIPS_RUN_ARGS:-} "${args[@]}" "$@"
