#!/usr/bin/env bash
# Train the demo job (sparse logistic regression on built-in synthetic data)
# with 4 ranks: 1 scheduler, 1 server, 2 workers. Extra arguments are passed
# on, e.g.  jobs/demo.sh -o linear.epochs=5
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
    # Open MPI refuses to run as root unless told that it is meant.
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# More ranks than cores on a laptop: let idle ranks yield the CPU.
export OMPI_MCA_mpi_yield_when_idle="${OMPI_MCA_mpi_yield_when_idle:-1}"
exec mpiexec -n "${NP:-4}" --oversubscribe python -m mpips train jobs/demo.toml "$@"
