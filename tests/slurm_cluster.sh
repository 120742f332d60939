#!/usr/bin/env bash
# A real SLURM cluster on this machine, for the tests and for trying
# `snakemake --profile profiles/slurm` on a laptop. Debian/Ubuntu, run as root.
#
#   tests/slurm_cluster.sh install   # apt-get install munge slurmctld slurmd slurm-client (if missing)
#   tests/slurm_cluster.sh start     # write /etc/slurm/*.conf, start munged, slurmctld, one slurmd
#                                    # per node, wait until every node is idle
#   tests/slurm_cluster.sh status    # print sinfo; exit 0 only when every node is usable
#   tests/slurm_cluster.sh stop      # cancel jobs, stop the daemons
#
# Every subcommand is idempotent: `start` on a healthy cluster with an unchanged
# configuration does nothing; `stop` on a stopped cluster does nothing.
#
# The cluster has two partitions, both always up (one controller, one configuration):
# - `debug` (the default): one node named after `hostname -s`, all CPUs, ~90% of the
#   memory, two fake GPUs (gres `gpu` backed by symlinks to /dev/null) so that
#   `--gpus`/`--gres=gpu:N` jobs get CUDA_VISIBLE_DEVICES from SLURM.
# - `multi`: two nodes `n1` and `n2` with one fake GPU each, for multi-node jobs
#   (`--partition=multi --nodes=2 --gpus-per-node=1`). Debian's slurmd is built with
#   multiple-slurmd support: each node is its own `slurmd -N <node>` on this machine
#   (NodeHostname = this host), with its own port, spool directory, pid and log file.
#   The nodes share this machine's CPUs and memory, which each advertises as its own
#   (SlurmdParameters=config_overrides).
# No slurmdbd: `sacct` does not work, so snakemake's executor must use
# `--slurm-status-command squeue`.
#
# Environment overrides:
#   BIDSTRAIN_SLURM_PARTITION  partition name              (default: debug)
#   BIDSTRAIN_SLURM_CPUS       CPUs the node advertises    (default: nproc; may exceed it)
#   BIDSTRAIN_SLURM_FAKE_GPUS  number of fake GPUs         (default: 2)
#   BIDSTRAIN_SLURM_TIMEOUT    seconds `start` waits       (default: 60)
set -euo pipefail

CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
CTLD_SPOOL=/var/spool/slurmctld
CTLD_PID=/run/slurmctld.pid
# One spool directory, pid file and log file per slurmd: SLURM expands %n to the node name.
SLURMD_SPOOL_PATTERN=/var/spool/slurmd/%n
SLURMD_PID_PATTERN=/run/slurmd-%n.pid
SLURMD_LOG_PATTERN=$LOG_DIR/slurmd-%n.log
MUNGE_RUN=/run/munge
MUNGE_PID=$MUNGE_RUN/munged.pid
MUNGE_KEY=/etc/munge/munge.key
# Fake GPU device files (symlinks to /dev/null), one per GPU: see gres.conf.
FAKE_GPU_DIR=/var/lib/slurm-fake-gpus

PARTITION=${BIDSTRAIN_SLURM_PARTITION:-debug}
NODE=$(hostname -s)
NCPUS=${BIDSTRAIN_SLURM_CPUS:-$(nproc)}
NGPUS=${BIDSTRAIN_SLURM_FAKE_GPUS:-2}
# The multi-node partition: its nodes, and the port of each one's slurmd (the node of
# the default partition keeps slurmd's default port, 6818).
MULTI_PARTITION=multi
MULTI_NODES=(n1 n2)
MULTI_PORT_BASE=17001
ALL_NODES=("$NODE" "${MULTI_NODES[@]}")
TIMEOUT=${BIDSTRAIN_SLURM_TIMEOUT:-60}
PACKAGES=(munge slurmctld slurmd slurm-client)

log() { echo "slurm_cluster: $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (try: sudo $0 $*)"
}

# --------------------------------------------------------------------- install
missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

cmd_install() {
    local missing
    missing=$(missing_packages)
    if [[ -z $missing ]]; then
        log "packages already installed: ${PACKAGES[*]}"
        return 0
    fi
    log "installing:" $missing
    export DEBIAN_FRONTEND=noninteractive
    # Wait for a dpkg lock held by another apt-get instead of failing at once.
    local apt=(apt-get -qq -o DPkg::Lock::Timeout=300)
    "${apt[@]}" update >/dev/null
    # shellcheck disable=SC2086 # word splitting of the package list is wanted
    "${apt[@]}" install -y --no-install-recommends $missing >/dev/null
    missing=$(missing_packages)
    [[ -z $missing ]] || die "apt-get did not install:" $missing
}

# ---------------------------------------------------------------------- config
real_memory_mb() {
    # 90% of MemTotal: slurmd drains a node whose RealMemory exceeds what it
    # measures, and a margin leaves room for the daemons and the OS.
    awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo
}

write_slurm_conf() { # $1: target file
    cat >"$1" <<EOF
# Written by tests/slurm_cluster.sh: a test cluster on one machine. Do not edit by hand.
ClusterName=bidstrain
# The controller runs on this machine; 127.0.0.1 avoids depending on DNS.
SlurmctldHost=${NODE}(127.0.0.1)
# Everything runs as root: no slurm user, no munge/slurm accounts to create.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again only after its old credential expired
# (begin time = now + cred_expire + 1): 120 s by default, 6 s here.
AuthInfo=cred_expire=5
MpiDefault=none
SwitchType=switch/none
StateSaveLocation=${CTLD_SPOOL}
SlurmdSpoolDir=${SLURMD_SPOOL_PATTERN}
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID_PATTERN}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${SLURMD_LOG_PATTERN}
SlurmctldDebug=info
SlurmdDebug=info

# Process tracking and task binding without cgroups. proctrack/cgroup depends on
# the host's cgroup layout (v1 or v2, owned by systemd or not), which differs between
# CI machines, containers and laptops; linuxproc tracks a job's processes through
# their parent pids and needs nothing. Enough for a test cluster: no CPU/memory
# confinement, no --cpu-bind (srun warns "lacks support for cpu binding").
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none

# No slurmdbd: no accounting database ("sacct: Slurm accounting storage is disabled"),
# and any account name passes (sbatch -A anything).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none

# cons_tres allocates cores, memory and GPUs separately; it is required for
# --gpus/--gpus-per-node/--cpus-per-gpu (what snakemake's slurm executor uses).
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Jobs that ask for no memory get this much per CPU instead of the whole node.
DefMemPerCPU=512

# Backfill scheduler. A job submitted to an idle node starts at once (the main
# scheduler runs on every submit and every job end), but a job that only became
# eligible by time (e.g. requeued: see cred_expire) waits for the periodic passes:
# 60 s (sched_interval) and 30 s (bf_interval) by default, 1 s here.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
# Finished jobs stay visible to squeue/scontrol for an hour. The snakemake
# executor reads job states with 'squeue' here (no sacct) and only trusts it
# when MinJobAge >= 3 x its first status-check delay.
MinJobAge=3600
# Batch jobs may be requeued (scontrol requeue, node failure).
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when a job is cancelled or requeued (default
# 30): the time a job has to write its checkpoint.
KillWait=10
# A node that restarts (slurmd restart) comes back into service by itself.
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
Waittime=0

# The node may advertise another CPU count than the hardware has
# (BIDSTRAIN_SLURM_CPUS) without being drained for "Low socket*core count".
SlurmdParameters=config_overrides

# Fake GPUs: see gres.conf. (AccountingStorageTRES=gres/gpu, which would list the
# GPUs in a job's TRES, is fatal without slurmdbd; "scontrol show job" shows them
# as TresPerJob=gres:gpu:1 for --gpus=1, TresPerNode=gres:gpu:1 for --gres=gpu:1.)
GresTypes=gpu
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${NCPUS} RealMemory=$(real_memory_mb) Gres=gpu:${NGPUS} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP

# The multi-node partition: more slurmd daemons on this host (slurmd -N <node>), each
# on its own port, with one fake GPU.
EOF
    local i
    for i in "${!MULTI_NODES[@]}"; do
        echo "NodeName=${MULTI_NODES[i]} NodeHostname=${NODE} NodeAddr=127.0.0.1" \
            "Port=$((MULTI_PORT_BASE + i)) CPUs=${NCPUS} RealMemory=$(real_memory_mb)" \
            "Gres=gpu:1 State=UNKNOWN"
    done >>"$1"
    local IFS=,
    echo "PartitionName=${MULTI_PARTITION} Nodes=${MULTI_NODES[*]} MaxTime=INFINITE State=UP" >>"$1"
}

# The number of fake GPUs of node $1.
node_gpus() {
    if [[ $1 == "$NODE" ]]; then
        echo "$NGPUS"
    else
        echo 1
    fi
}

write_gres_conf() { # $1: target file
    {
        echo "# Written by tests/slurm_cluster.sh: fake GPUs for a test cluster."
        echo "# No NVML autodetection. With a File= per GPU, SLURM sets CUDA_VISIBLE_DEVICES"
        echo "# (0, 1, ...) in GPU jobs; without File= it sets nothing. The names must differ"
        echo "# (slurmd: 'gpu duplicate device file name (/dev/null)' is fatal), so each"
        echo "# fake GPU is its own symlink to /dev/null."
        echo "AutoDetect=off"
        local node i
        for node in "${ALL_NODES[@]}"; do
            for ((i = 0; i < $(node_gpus "$node"); i++)); do
                echo "NodeName=$node Name=gpu File=${FAKE_GPU_DIR}/$node-gpu$i"
            done
        done
    } >"$1"
}

write_cgroup_conf() { # $1: target file
    # Not used by proctrack/linuxproc and task/none; written so that a cgroup.conf
    # left from another setup cannot switch cgroup confinement on.
    cat >"$1" <<EOF
# Written by tests/slurm_cluster.sh: no cgroup enforcement on the test cluster.
CgroupPlugin=autodetect
IgnoreSystemd=yes
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
}

# Writes the three files into directory $1.
write_configs() {
    write_slurm_conf "$1/slurm.conf"
    write_gres_conf "$1/gres.conf"
    write_cgroup_conf "$1/cgroup.conf"
}

# Exit status 0 when the config in $CONF_DIR equals what we would write now.
configs_current() {
    local tmp f rc=0
    tmp=$(mktemp -d)
    write_configs "$tmp"
    for f in slurm.conf gres.conf cgroup.conf; do
        cmp -s "$tmp/$f" "$CONF_DIR/$f" || rc=1
    done
    rm -rf "$tmp"
    return $rc
}

make_fake_gpus() {
    local node i
    mkdir -p "$FAKE_GPU_DIR"
    for node in "${ALL_NODES[@]}"; do
        for ((i = 0; i < $(node_gpus "$node"); i++)); do
            ln -sfn /dev/null "$FAKE_GPU_DIR/$node-gpu$i"
        done
    done
}

install_configs() {
    make_fake_gpus
    mkdir -p "$CONF_DIR"
    # Write next to the target and rename: a client (sinfo, sbatch) reading
    # slurm.conf meanwhile never sees a half-written file.
    local tmp f
    tmp=$(mktemp -d "$CONF_DIR/.new.XXXXXX")
    write_configs "$tmp"
    for f in slurm.conf gres.conf cgroup.conf; do
        chmod 644 "$tmp/$f"
        mv -f "$tmp/$f" "$CONF_DIR/$f"
    done
    rmdir "$tmp"
}

# --------------------------------------------------------------------- daemons
pid_alive() { # $1: pid file
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    # A zombie (exited, not yet reaped) counts as gone.
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}

# Starts daemon $1 (command: the rest). It gets neither our stdout/stderr (a caller
# that captures them, such as pytest, would wait until the daemon exits) nor the lock
# on fd 9 (the daemon would hold it forever). What it prints before it forks into the
# background goes to $LOG_DIR/<name>.stderr.
run_daemon() {
    local name=$1
    shift
    mkdir -p "$LOG_DIR"
    "$@" </dev/null >"$LOG_DIR/$name.stderr" 2>&1 9>&-
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then
        return 0
    fi
    mkdir -p "$MUNGE_RUN" /var/log/munge /var/lib/munge
    chown munge:munge "$MUNGE_RUN" /var/log/munge /var/lib/munge
    chmod 755 "$MUNGE_RUN"
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating munge key $MUNGE_KEY"
        mkdir -p "$(dirname "$MUNGE_KEY")"
        dd if=/dev/urandom bs=1 count=1024 of="$MUNGE_KEY" status=none
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 400 "$MUNGE_KEY"
    # munged refuses to run as root by design; run it as its own user.
    run_daemon munged runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" ||
        die "munged did not start: $(tail -n 20 /var/log/munge/munged.log 2>/dev/null)"
    local i
    for ((i = 0; i < 50; i++)); do
        munge_ok && return 0
        sleep 0.1
    done
    die "munge does not work: $(tail -n 20 /var/log/munge/munged.log 2>/dev/null)"
}

# SLURM's %n pattern $1 for node $2.
for_node() { echo "${1//%n/$2}"; }

# Node $1's state as sinfo prints it (idle, mix, alloc, down*, drain, ...).
# Empty when the controller does not answer; never fails (set -e).
node_state() { sinfo -h -N -n "$1" -o '%t' 2>/dev/null | head -n 1 || true; }

# "node=state ..." for every node.
node_states() {
    local node
    for node in "${ALL_NODES[@]}"; do
        printf '%s=%s ' "$node" "$(node_state "$node")"
    done
}

# Usable: every node answers and takes jobs (no '*' = not responding, not down/drained).
nodes_usable() {
    local node
    for node in "${ALL_NODES[@]}"; do
        case "$(node_state "$node")" in
        idle | mix | alloc | comp) ;;
        *) return 1 ;;
        esac
    done
}

slurmds_running() {
    local node
    for node in "${ALL_NODES[@]}"; do
        pid_alive "$(for_node "$SLURMD_PID_PATTERN" "$node")" || return 1
    done
}

daemons_running() { munge_ok && pid_alive "$CTLD_PID" && slurmds_running; }

show_failure() {
    log "node states: $(node_states); sinfo -R:"
    sinfo -R 2>&1 | sed 's/^/    /' >&2 || true
    local f
    for f in "$LOG_DIR"/*.stderr "$LOG_DIR/slurmctld.log" "$LOG_DIR"/slurmd-*.log /var/log/munge/munged.log; do
        if [[ -s $f ]]; then
            log "--- tail of $f"
            tail -n 25 "$f" >&2
        fi
    done
}

cmd_start() {
    command -v slurmctld >/dev/null || die "slurmctld is not installed: run '$0 install' first"

    if daemons_running && nodes_usable && configs_current; then
        log "already running: $(node_states)(partitions $PARTITION, $MULTI_PARTITION)"
        return 0
    fi
    if pid_alive "$CTLD_PID" || any_slurmd_running; then
        log "restarting (configuration changed or a node not usable)"
        cmd_stop
    fi

    install_configs
    local node pidfiles=("$CTLD_PID")
    for node in "${ALL_NODES[@]}"; do
        mkdir -p "$(for_node "$SLURMD_SPOOL_PATTERN" "$node")"
        pidfiles+=("$(for_node "$SLURMD_PID_PATTERN" "$node")")
    done
    mkdir -p "$LOG_DIR" "$CTLD_SPOOL"
    start_munge

    # The daemons are not running: pid files left by a killed one are stale.
    rm -f "${pidfiles[@]}"
    # -c: start from a clean state (no jobs or node states from an earlier run),
    # so a restarted test cluster is always the same. -i: ignore unreadable state.
    run_daemon slurmctld slurmctld -c -i || {
        show_failure
        die "slurmctld did not start"
    }
    # -N: the node this slurmd is (every node's NodeHostname is this host).
    for node in "${ALL_NODES[@]}"; do
        run_daemon "slurmd-$node" slurmd -N "$node" || {
            show_failure
            die "slurmd -N $node did not start"
        }
    done

    local deadline=$((SECONDS + TIMEOUT)) state pidfile idle
    while ((SECONDS < deadline)); do
        # A daemon may die after it forked (e.g. on a fatal configuration error). Its
        # pid file appears a moment after the start command returned.
        idle=1
        for pidfile in "${pidfiles[@]}"; do
            if [[ -s $pidfile ]] && ! pid_alive "$pidfile"; then
                show_failure
                die "$(basename "$pidfile" .pid) exited during start"
            fi
            pid_alive "$pidfile" || idle=0
        done
        for node in "${ALL_NODES[@]}"; do
            state=$(node_state "$node")
            [[ $state == idle ]] || idle=0
            # A node that registered as down (e.g. after an unclean stop) is
            # brought back; one drained for a real reason shows up in show_failure.
            if [[ $state == down || $state == drain ]]; then
                scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
            fi
        done
        if ((idle)); then
            log "idle: $(node_states)(partitions $PARTITION, $MULTI_PARTITION; ${SECONDS}s)"
            return 0
        fi
        sleep 0.5
    done
    show_failure
    die "nodes not idle within ${TIMEOUT}s: $(node_states)"
}

wait_pid_gone() { # $1: pid file, $2: deciseconds
    local i
    for ((i = 0; i < $2; i++)); do
        pid_alive "$1" || return 0
        sleep 0.1
    done
    return 1
}

stop_pidfile() { # $1: pid file, $2: name
    pid_alive "$1" || return 0
    kill -TERM "$(<"$1")" 2>/dev/null || true
    if ! wait_pid_gone "$1" 100; then
        log "$2 did not stop on SIGTERM; sending SIGKILL"
        kill -KILL "$(<"$1")" 2>/dev/null || true
        wait_pid_gone "$1" 50 || true
    fi
}

# Every slurmd pid file there is: of the current nodes, and of nodes an earlier
# configuration had (/run/slurmd.pid of the one-node cluster this script once started).
slurmd_pidfiles() {
    local f
    # shellcheck disable=SC2046 # the unquoted pattern is expanded on purpose
    for f in $(for_node "$SLURMD_PID_PATTERN" "*") /run/slurmd.pid; do
        [[ -e $f ]] && echo "$f"
    done
    return 0
}

any_slurmd_running() {
    local pidfile
    for pidfile in $(slurmd_pidfiles); do
        pid_alive "$pidfile" && return 0
    done
    return 1
}

cmd_stop() {
    if pid_alive "$CTLD_PID"; then
        # Cancel all jobs first so that no job steps outlive slurmd.
        local jobs
        jobs=$(squeue -h -o '%i' -t PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            local i
            for ((i = 0; i < 100; i++)); do
                [[ -z $(squeue -h -o '%i' -t RUNNING,COMPLETING 2>/dev/null || true) ]] && break
                sleep 0.1
            done
        fi
    fi
    local pidfile
    for pidfile in $(slurmd_pidfiles); do
        stop_pidfile "$pidfile" "$(basename "$pidfile" .pid)"
    done
    stop_pidfile "$CTLD_PID" slurmctld
    stop_pidfile "$MUNGE_PID" munged
    log "stopped"
}

cmd_status() {
    if ! command -v sinfo >/dev/null; then
        log "not installed"
        return 1
    fi
    sinfo || true
    if daemons_running && nodes_usable; then
        return 0
    fi
    log "not usable (munge: $(munge_ok && echo ok || echo down)," \
        "slurmctld: $(pid_alive "$CTLD_PID" && echo up || echo down)," \
        "slurmd: $(slurmds_running && echo up || echo down), nodes: $(node_states))"
    return 1
}

# One start/stop at a time: test sessions running side by side share the cluster.
LOCK=/run/bidstrain-slurm-cluster.lock
with_lock() { # $1: subcommand name, rest: command
    need_root "$1"
    shift
    exec 9>"$LOCK"
    flock -w 300 9 || die "another $0 is still running (lock $LOCK)"
    "$@"
}

case "${1:-}" in
install)
    # Nothing to do (and no root needed) when everything is installed.
    if [[ -z $(missing_packages) ]]; then
        log "packages already installed: ${PACKAGES[*]}"
    else
        with_lock install cmd_install
    fi
    ;;
start) with_lock start cmd_start ;;
stop) with_lock stop cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 {install|start|stop|status}" >&2
    exit 2
    ;;
esac
