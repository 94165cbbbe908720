#!/usr/bin/env bash
# Filters benchmark (issue 6): the same L1 logistic-regression job on news20
# binary and synthetic CTR with no filters, each filter alone, then the whole
# chain; prints bytes worker->server and server->worker of the weight table,
# keys/s and final test AUC for each, in one run. Every mpiexec has a timeout.
# The bench starts its own jobs (and sets what Open MPI needs for them).
#   jobs/bench_filters.sh [--data news20,ctr] [--repeat R] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec python -m mpips bench filters "$@"
