#!/usr/bin/env bash
# Train the demo job (sparse logistic regression on built-in synthetic data)
# with 4 ranks: 1 scheduler, 1 server, 2 workers. Extra arguments are passed
# on, e.g.  jobs/demo.sh -o linear.epochs=5
# MPIPS_NP sets the rank count; MPIPS_RUN_ARGS adds options of `mpips run`
# (e.g. "--no-ft", "--mpi-arg=--hostfile=hosts"; python -m mpips run --help).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n ${NP:-} ]]; then
    echo "jobs/demo.sh: NP is deprecated, use MPIPS_NP=$NP" >&2
    MPIPS_NP=${MPIPS_NP:-$NP}
fi
# shellcheck disable=SC2086  # MPIPS_RUN_ARGS is a list of options
exec python -m mpips run -n "${MPIPS_NP:-4}" ${MPIPS_RUN_ARGS:-} jobs/demo.toml "$@"
