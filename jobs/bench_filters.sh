#!/usr/bin/env bash
# Filters benchmark (issue 6): the same L1 logistic-regression job on news20
# binary and synthetic CTR with no filters, each filter alone, then the whole
# chain; prints bytes worker->server and server->worker of the weight table,
# keys/s and final test AUC for each, in one run. Every mpiexec has a timeout.
#   jobs/bench_filters.sh [--data news20,ctr] [--repeat R] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
[[ $(id -u) == 0 ]] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_mpi_yield_when_idle="${OMPI_MCA_mpi_yield_when_idle:-1}"
exec python -m mpips bench filters "$@"
