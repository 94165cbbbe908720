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
# Ranks: MPIPS_NP (default the number of cores), or SLURM_NTASKS inside a
# Slurm allocation. It runs slurm/convert.sbatch, which starts the ranks as
# `python -m mpips run` does (MPIPS_RUN_ARGS, MPIPS_PYTHON: see there).
set -euo pipefail

if (($# < 1)) || [[ $1 == -h || $1 == --help ]]; then
    echo "usage: jobs/convert.sh INPUT... -o OUTDIR [--format libsvm] [...]" >&2
    exit 2
fi
export MPIPS_NP=${MPIPS_NP:-$(nproc 2>/dev/null || echo 1)}
exec "$(dirname "$0")/../slurm/convert.sbatch" "$@"
