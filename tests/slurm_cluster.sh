#!/usr/bin/env bash
# A throw-away one-node Slurm cluster on this host, for tests and CI.
#
#   tests/slurm_cluster.sh start    install slurm-wlm + munge if missing, start the
#                                   daemons, wait until the node is idle
#   tests/slurm_cluster.sh stop     cancel jobs, stop exactly the daemons we started
#   tests/slurm_cluster.sh status   exit 0 if all three daemons run and the node answers
#   tests/slurm_cluster.sh env      print "export SLURM_CONF=..." (for eval)
#
# Everything lives under $MPIPS_SLURM_DIR (default ${TMPDIR:-/tmp}/mpips-slurm):
# slurm.conf, a private munge key and socket, state, spool, logs and PID files.
# Nothing under /etc is changed and no systemd unit is used, so the host's own
# Slurm or munge (if any) is left alone. Point commands at this cluster with
#   export SLURM_CONF=$MPIPS_SLURM_DIR/slurm.conf
#
# Environment:
#   MPIPS_SLURM_DIR    state directory (default ${TMPDIR:-/tmp}/mpips-slurm)
#   MPIPS_SLURM_CPUS   CPUs the node advertises (default 8; more than the real
#                      cores so that tests can start a few ranks)
#   MPIPS_SLURM_PORT   slurmctld port (default 6817); slurmd uses PORT+1
#   MPIPS_SLURM_NO_INSTALL=1   never apt-get; fail (exit 3) if Slurm is missing
#
# Exit codes: 0 ok; 1 a daemon failed to start (logs are printed); 3 Slurm is
# not installed and cannot be installed here (callers may skip on 3).
#
# start is idempotent: a running cluster is reused. It needs root (slurmd runs
# jobs as their users, munged runs as user munge).
set -euo pipefail

DIR=${MPIPS_SLURM_DIR:-${TMPDIR:-/tmp}/mpips-slurm}
CPUS=${MPIPS_SLURM_CPUS:-8}
CTLD_PORT=${MPIPS_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
CONF=$DIR/slurm.conf
MUNGE_DIR=$DIR/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2
START_TIMEOUT=${MPIPS_SLURM_START_TIMEOUT:-30}
export SLURM_CONF=$CONF

log() { echo "slurm_cluster: $*" >&2; }
die() { log "error: $*"; exit "${2:-1}"; }

# -- install ---------------------------------------------------------------

missing_tools() {
    local t out=()
    for t in munged mungekey slurmctld slurmd slurmstepd sinfo sbatch squeue scontrol; do
        command -v "$t" >/dev/null 2>&1 || [[ -x /usr/sbin/$t ]] || out+=("$t")
    done
    echo "${out[*]}"
}

ensure_installed() {
    # Debian puts the daemons in /usr/sbin, which a non-login PATH may lack.
    case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin:/sbin ;; esac
    local missing
    missing=$(missing_tools)
    # libpmix-dev provides the unversioned libpmix.so that Slurm's mpi_pmix
    # plugin dlopens: without it `srun --mpi=pmix` fails. Optional for mpiexec.
    local want_pmix=0
    if ! ls /usr/lib/*/libpmix.so >/dev/null 2>&1; then want_pmix=1; fi
    if [[ -z $missing && $want_pmix == 0 ]]; then return 0; fi
    if [[ -n $missing ]]; then log "missing: $missing"; fi
    if [[ ${MPIPS_SLURM_NO_INSTALL:-0} == 1 ]]; then
        [[ -z $missing ]] && return 0
        die "Slurm is not installed and MPIPS_SLURM_NO_INSTALL=1" 3
    fi
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        [[ -z $missing ]] && return 0
        die "Slurm is not installed and cannot be installed here (needs root and apt-get): $missing" 3
    fi
    log "installing slurm-wlm munge libpmix-dev with apt-get (about 15 s)"
    local aptlog=$DIR/apt.log
    mkdir -p "$DIR"
    # One update only: the package lists on a fresh machine may be empty.
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
               slurm-wlm munge libpmix-dev; } >"$aptlog" 2>&1 </dev/null; then
        tail -n 20 "$aptlog" >&2
        die "apt-get could not install slurm-wlm/munge (log: $aptlog)" 3
    fi
    missing=$(missing_tools)
    [[ -z $missing ]] || die "still missing after apt-get install: $missing" 3
}

# -- pid files ---------------------------------------------------------------

# pid_alive FILE NAME: the PID in FILE runs and its command is NAME (so a
# recycled PID of an unrelated process is never taken for our daemon).
pid_alive() {
    local file=$1 name=$2 pid comm
    [[ -s $file ]] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [[ -n $pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name"* ]]
}

stop_pid() {
    local file=$1 name=$2 pid
    if ! pid_alive "$file" "$name"; then rm -f "$file"; return 0; fi
    pid=$(tr -dc '0-9' <"$file")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 5 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

# -- configuration -------------------------------------------------------------

node_name() { hostname -s; }

write_conf() {
    local node user
    node=$(node_name)
    user=$(id -un)
    mkdir -p "$DIR"/{state,spool,log,run}
    cat >"$CONF.tmp" <<EOF
# Written by tests/slurm_cluster.sh: a one-node test cluster. Do not edit.
ClusterName=mpips-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Our own munged on a private socket: the host's munge (if any) is untouched.
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in containers/VMs without systemd: track processes by parent PID.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Let the node advertise more CPUs than it has, so tests can run a few ranks.
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# Short grace between SIGTERM and SIGKILL at the time limit keeps tests quick.
KillWait=10
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=60
NodeName=$node NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

setup_munge() {
    mkdir -p "$MUNGE_DIR"
    # munged refuses keys and sockets in directories others can write to.
    chown munge:munge "$MUNGE_DIR"
    chmod 0700 "$MUNGE_DIR"
    if [[ ! -s $MUNGE_DIR/munge.key ]]; then
        log "creating munge key $MUNGE_DIR/munge.key"
        if ! mungekey --create --keyfile="$MUNGE_DIR/munge.key" 2>/dev/null; then
            dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1 count=1024 status=none
        fi
    fi
    chown munge:munge "$MUNGE_DIR/munge.key"
    chmod 0400 "$MUNGE_DIR/munge.key"
}

# -- daemons -------------------------------------------------------------------

print_logs() {
    local f
    for f in "$MUNGE_DIR/munged.log" "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log"; do
        [[ -e $f ]] || continue
        echo "----- $f (last 40 lines) -----" >&2
        tail -n 40 "$f" >&2 || true
    done
}

fail_start() {
    log "error: $1"
    print_logs
    exit 1
}

start_munged() {
    if pid_alive "$MUNGE_DIR/munged.pid" munged; then return 0; fi
    setup_munge
    log "starting munged (user munge, socket $MUNGE_SOCKET)"
    # runuser (not su): no PAM prompt, works without a TTY. munged forks and
    # writes its PID file itself.
    # 9>&-: daemons must not inherit (and hold forever) the lock of with_lock.
    runuser -u munge -- munged 9>&- \
        --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" \
        --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" --force \
        || fail_start "munged did not start"
    local _
    for _ in $(seq 1 50); do
        [[ -S $MUNGE_SOCKET ]] && pid_alive "$MUNGE_DIR/munged.pid" munged && return 0
        sleep 0.1
    done
    fail_start "munged did not create $MUNGE_SOCKET"
}

start_slurm_daemons() {
    local d
    if ! pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
        log "starting slurmctld -f $CONF"
        # -i: ignore state from a previous run's crash; the node is new each time.
        slurmctld -f "$CONF" -i 9>&- || fail_start "slurmctld did not start"
    fi
    if ! pid_alive "$DIR/run/slurmd.pid" slurmd; then
        log "starting slurmd -f $CONF"
        slurmd -f "$CONF" -N "$(node_name)" 9>&- || fail_start "slurmd did not start"
    fi
    # Both fork into the background; the PID file appears a moment later.
    for d in slurmctld slurmd; do
        for _ in $(seq 1 50); do
            pid_alive "$DIR/run/$d.pid" "$d" && break
            sleep 0.1
        done
        pid_alive "$DIR/run/$d.pid" "$d" || fail_start "$d did not write $DIR/run/$d.pid"
    done
}

node_state() {
    timeout 10 sinfo -h -N -n "$(node_name)" -o '%T' 2>/dev/null | head -n 1
}

wait_idle() {
    local deadline=$((SECONDS + START_TIMEOUT)) state="" d
    while ((SECONDS < deadline)); do
        # Our daemons first: a port taken by another slurmctld makes ours
        # exit, while sinfo might still get an answer from the other one.
        for d in slurmctld slurmd; do
            pid_alive "$DIR/run/$d.pid" "$d" ||
                fail_start "$d exited during start-up (port $CTLD_PORT/$SLURMD_PORT taken? see its log)"
        done
        state=$(node_state || true)
        case $state in
            idle | mixed | allocated | completing) log "node $(node_name) is $state"; return 0 ;;
            down* | drain*)
                # A node left down by an earlier run of this cluster: bring it back.
                timeout 10 scontrol update NodeName="$(node_name)" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.3
    done
    fail_start "node $(node_name) not idle after ${START_TIMEOUT}s (sinfo state: '${state:-no answer}')"
}

daemons_alive() {
    pid_alive "$MUNGE_DIR/munged.pid" munged &&
        pid_alive "$DIR/run/slurmctld.pid" slurmctld &&
        pid_alive "$DIR/run/slurmd.pid" slurmd
}

with_lock() {
    # Concurrent start/stop (two test sessions on one machine) serialise here.
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"
    flock -w 120 9 || die "could not lock $DIR/.lock within 120 s"
}

cmd_start() {
    [[ $(id -u) == 0 ]] || die "needs root (slurmd and munged as user munge); run with sudo" 3
    mkdir -p "$DIR"
    ensure_installed
    with_lock
    if daemons_alive && [[ -n $(node_state || true) ]]; then
        log "already running (SLURM_CONF=$CONF)"
    else
        write_conf
        start_munged
        start_slurm_daemons
        wait_idle
    fi
    echo "export SLURM_CONF=$CONF"
}

cmd_stop() {
    [[ -d $DIR ]] || { log "nothing to stop ($DIR absent)"; return 0; }
    with_lock
    if pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
        # Cancel jobs first so that their processes end with the cluster.
        local jobs
        jobs=$(timeout 10 squeue -h -o '%i' 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            log "cancelling jobs: ${jobs//$'\n'/ }"
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null || true
            local _
            for _ in $(seq 1 30); do
                [[ -z $(timeout 5 squeue -h -o '%i' 2>/dev/null || true) ]] && break
                sleep 0.3
            done
        fi
    fi
    stop_pid "$DIR/run/slurmd.pid" slurmd
    stop_pid "$DIR/run/slurmctld.pid" slurmctld
    stop_pid "$MUNGE_DIR/munged.pid" munged
    log "stopped"
}

cmd_status() {
    local d ok=0
    for d in slurmctld slurmd; do
        if pid_alive "$DIR/run/$d.pid" "$d"; then
            echo "$d: running (pid $(cat "$DIR/run/$d.pid"))"
        else
            echo "$d: not running"; ok=1
        fi
    done
    if pid_alive "$MUNGE_DIR/munged.pid" munged; then
        echo "munged: running (pid $(cat "$MUNGE_DIR/munged.pid"))"
    else
        echo "munged: not running"; ok=1
    fi
    if ((ok == 0)); then
        echo "node: $(node_state || echo 'no answer')"
        echo "SLURM_CONF=$CONF"
    fi
    return $ok
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    logs) print_logs ;;
    *) echo "usage: $0 start|stop|status|env|logs" >&2; exit 2 ;;
esac
