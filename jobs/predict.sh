#!/usr/bin/env bash
# Score a converted data set with a trained model:
#
#   jobs/predict.sh MODEL DATA_DIR OUT [more predict options ...]
#
#   jobs/predict.sh runs/news20/model data/news20-test runs/news20/predictions.txt
#
# Runs `python -m mpips predict --model MODEL --data DATA_DIR --out OUT`.
#
# Runs on a workstation (MPIPS_NP ranks, default 1) and inside a Slurm
# allocation (salloc, or an sbatch script: SLURM_NTASKS ranks). Launcher,
# Open MPI settings and the other variables: see slurm/mpips-env.sh.
set -euo pipefail

# Find the checkout: this file's folder, or, when sbatch runs a spooled copy of
# it, the path sbatch was given (scontrol knows it).
find_home() {
    local d cmd=""
    if [[ -n ${SLURM_JOB_ID:-} ]]; then
        cmd=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -n 1)
    fi
    for d in "${MPIPS_HOME:-}" "$(dirname "$0")/.." "${cmd:+$(dirname "$cmd")/..}" "${SLURM_SUBMIT_DIR:-.}"; do
        if [[ -n $d && -f $d/slurm/mpips-env.sh ]]; then (cd "$d" && pwd); return 0; fi
    done
    echo "error: cannot find slurm/mpips-env.sh: set MPIPS_HOME to the mpips checkout" >&2
    return 1
}
MPIPS_HOME=$(find_home)
# shellcheck source=slurm/mpips-env.sh
source "$MPIPS_HOME/slurm/mpips-env.sh"

if (($# < 3)) || [[ $1 == -h || $1 == --help ]]; then
    echo "usage: jobs/predict.sh MODEL DATA_DIR OUT [options ...]" >&2
    exit 2
fi
model=$1 data=$2 out=$3
shift 3
[[ -e $model ]] || mpips_die "model '$model' not found"
[[ -f $data/manifest.json ]] ||
    mpips_die "'$data' is not a converted data set (no manifest.json): run jobs/convert.sh first"
# Say so plainly on an mpips that has no predict command yet.
PYTHONPATH=$MPIPS_HOME${PYTHONPATH:+:$PYTHONPATH} "$MPIPS_PYTHON" -m mpips predict --help >/dev/null 2>&1 ||
    mpips_die "this mpips has no 'predict' command (python -m mpips --help)"
mkdir -p "$(dirname "$out")"
export MPIPS_NP=${MPIPS_NP:-1}

mpips_setup_env
mpips_launch_cmd
mpips_banner
exec "${MPIPS_LAUNCH[@]}" "$MPIPS_PYTHON" -m mpips predict --model "$model" --data "$data" --out "$out" "$@"
