#!/usr/bin/env bash
# A count-min sketch job fed from this script's stdin; end of input ends the job.
#
#   producer | jobs/sketch_stdin.sh JOB.toml [train options: -o ..., --servers S]
#   zcat words.gz | MPIPS_NP=4 jobs/sketch_stdin.sh jobs/sketch_text.toml -o job.output=runs/words
#
# Why a FIFO: Open MPI 5's mpiexec forwards stdin to one rank (--stdin R) but
# never delivers end of file to it (open-mpi/ompi#12777), so a stream on
# mpiexec's own stdin could not end. This script copies its stdin into a named
# pipe that worker 0 reads ([sketch] source = "file"): when the input ends, the
# pipe ends, the workers finish, the servers save the sketch and the job exits 0.
# Ranks: MPIPS_NP (default 4); the ranks are started by `python -m mpips run`
# (MPIPS_RUN_ARGS: its options, see jobs/demo.sh). The rank count as first
# argument (`sketch_stdin.sh 4 JOB.toml`) still works but is deprecated.
set -uo pipefail
if [[ ${1:-} =~ ^[0-9]+$ ]]; then
    echo "$0: the rank count as first argument is deprecated, use MPIPS_NP=$1" >&2
    MPIPS_NP=$1
    shift
fi
if (($# < 1)); then
    echo "usage: producer | $0 JOB.toml [train options ...]" >&2
    exit 2
fi
[[ -z ${MPIEXEC:-}${MPIEXEC_OPTS:-} ]] ||
    echo "$0: MPIEXEC and MPIEXEC_OPTS are no longer read: set MPIPS_RUN_ARGS (--mpi-arg=...)" >&2
job=$1
shift
dir=$(mktemp -d)
fifo=$dir/stream
mkfifo "$fifo"
# (explicit <&0: bash would give a background job /dev/null as stdin)
cat <&0 >"$fifo" &
feeder=$!
# shellcheck disable=SC2086  # MPIPS_RUN_ARGS is a list of options
python -m mpips run -n "${MPIPS_NP:-4}" ${MPIPS_RUN_ARGS:-} "$job" \
    -o sketch.source=file -o "sketch.path=$fifo" "$@" </dev/null
rc=$?
# If the job failed before opening the pipe, the copier still waits for a reader.
kill "$feeder" 2>/dev/null
wait "$feeder" 2>/dev/null
rm -rf "$dir"
exit "$rc"
