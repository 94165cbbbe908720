#!/usr/bin/env bash
# A count-min sketch job fed from this script's stdin; end of input ends the job.
#
#   producer | jobs/sketch_stdin.sh NP JOB.toml [train options: -o ..., --servers S]
#   zcat words.gz | jobs/sketch_stdin.sh 4 jobs/sketch_text.toml -o job.output=runs/words
#
# Why a FIFO: Open MPI 5's mpiexec forwards stdin to one rank (--stdin R) but
# never delivers end of file to it (open-mpi/ompi#12777), so a stream on
# mpiexec's own stdin could not end. This script copies its stdin into a named
# pipe that worker 0 reads ([sketch] source = "file"): when the input ends, the
# pipe ends, the workers finish, the servers save the sketch and the job exits 0.
# MPIEXEC (default mpiexec) and MPIEXEC_OPTS (e.g. "--oversubscribe") are used
# as given; as root, Open MPI also wants OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)=1.
set -uo pipefail
if (($# < 2)); then
    echo "usage: producer | $0 NP JOB.toml [train options ...]" >&2
    exit 2
fi
np=$1 job=$2
shift 2
dir=$(mktemp -d)
fifo=$dir/stream
mkfifo "$fifo"
# (explicit <&0: bash would give a background job /dev/null as stdin)
cat <&0 >"$fifo" &
feeder=$!
# shellcheck disable=SC2086  # MPIEXEC_OPTS is a list of options
"${MPIEXEC:-mpiexec}" ${MPIEXEC_OPTS:-} -n "$np" python -m mpips train "$job" \
    -o sketch.source=file -o "sketch.path=$fifo" "$@" </dev/null
rc=$?
# If the job failed before opening the pipe, the copier still waits for a reader.
kill "$feeder" 2>/dev/null
wait "$feeder" 2>/dev/null
rm -rf "$dir"
exit "$rc"
