#!/usr/bin/env bash
# Convert a Hadoop/Spark export (folders of part-* files, plain or gzip) or
# single files to mpips HDF5 partitions:
#
#   jobs/convert.sh INPUT... -o OUTDIR [--format libsvm|criteo|csv|parquet] [...]
#
#   jobs/convert.sh ../shared/data/news20.binary.train.libsvm.gz -o data/news20 --format libsvm
#   MPIPS_NP=8 jobs/convert.sh exports/clicks/ -o data/clicks --format criteo
#
# All arguments go to `python -m data_tools convert` (see its --help). The
# ranks share the input files, so more ranks convert a many-file export faster.
#
# Runs on a workstation (MPIPS_NP ranks, default the number of cores) and inside a Slurm
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
    echo "usage: jobs/convert.sh INPUT... -o OUTDIR [--format libsvm] [...]" >&2
    exit 2
fi
export MPIPS_NP=${MPIPS_NP:-$(nproc 2>/dev/null || echo 1)}

mpips_setup_env
mpips_launch_cmd
mpips_banner
mpips_log "${MPIPS_LAUNCH[*]} $MPIPS_PYTHON -m data_tools convert $*"
exec "${MPIPS_LAUNCH[@]}" "$MPIPS_PYTHON" -m data_tools convert "$@"
