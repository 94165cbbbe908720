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
# Runs on a workstation (MPIPS_NP ranks, default 4) and inside a Slurm
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

if (($# < 1)) || [[ $1 == -h || $1 == --help ]]; then
    echo "usage: jobs/train.sh JOB.toml [TRAIN_DIR [TEST_DIR]] [-o section.key=value ...]" >&2
    exit 2
fi
job=$1
shift
[[ -f $job ]] || mpips_die "job file '$job' not found"
args=(train "$job")
# Positional data folders until the first option.
for key in data.train data.test; do
    if (($# > 0)) && [[ $1 != -* ]]; then
        [[ -f $1/manifest.json ]] ||
            mpips_die "'$1' is not a converted data set (no manifest.json): run jobs/convert.sh first"
        args+=(-o "$key=$1")
        shift
    fi
done
args+=("$@")

mpips_setup_env
mpips_launch_cmd
mpips_banner
mpips_log "${MPIPS_LAUNCH[*]} $MPIPS_PYTHON -m mpips ${args[*]}"
exec "${MPIPS_LAUNCH[@]}" "$MPIPS_PYTHON" -m mpips "${args[@]}"
