#!/usr/bin/env bash
# A real single-node Slurm (slurmctld + slurmd + munged on localhost) for the launcher tests.
#
#   .ci/slurm.sh start     install slurm-wlm + munge if missing, write slurm.conf, start, wait for an idle node
#   .ci/slurm.sh stop      stop the three daemons by the PIDs `start` saved (never by name)
#   .ci/slurm.sh status    sinfo + the saved PIDs
#
# Follows ../shared/notes/slurm-single-node.md (Debian 12, root, no systemd, no cgroups). State, spool, logs
# and PIDs live under $SSA_SLURM_DIR (default /tmp/ssa-slurm). The node gets every CPU `slurmd -C` reports.
set -euo pipefail

DIR=${SSA_SLURM_DIR:-/tmp/ssa-slurm}
CONF=/etc/slurm/slurm.conf

log() { echo "slurm.sh: $*" >&2; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || { log "slurm-wlm/munge missing and not root: cannot install"; exit 1; }
    log "installing slurm-wlm munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
}

alive() { [ -s "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

write_conf() {
    local host node_line cpus mem
    host=$(hostname -s)
    # slurmd -C prints e.g. "NodeName=h CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1
    # RealMemory=23000"; we keep its topology, address the node by 127.0.0.1 and stay under its memory.
    node_line=$(slurmd -C | head -n1)
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    mem=$(( mem > 2000 ? mem - 1000 : mem ))
    node_line=$(sed -e "s/^NodeName=[^ ]*/NodeName=$host NodeAddr=127.0.0.1/" \
        -e "s/RealMemory=[0-9]*/RealMemory=$mem/" <<<"$node_line")
    mkdir -p /etc/slurm
    cat > "$CONF" <<CONF
# Written by .ci/slurm.sh: a single-node CI cluster ($cpus CPUs). Not for production.
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
KillWait=5
MinJobAge=300
$node_line State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
}

start() {
    install_packages
    if alive slurmctld && alive slurmd && sinfo -h -o %t 2>/dev/null | grep -qE 'idle|mix|alloc'; then
        log "already running"; sinfo; return
    fi
    stop_daemons
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" /run/munge
    chown munge:munge /run/munge && chmod 755 /run/munge
    write_conf
    if ! munge -n >/dev/null 2>&1; then
        setpriv --reuid=munge --regid=munge --clear-groups /usr/sbin/munged -F > "$DIR/log/munged.out" 2>&1 &
        echo $! > "$DIR/munged.pid"
        for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    munge -n >/dev/null 2>&1 || { log "munged did not start: $DIR/log/munged.out"; exit 1; }
    slurmctld -D > "$DIR/log/slurmctld.out" 2>&1 &
    echo $! > "$DIR/slurmctld.pid"
    slurmd -D > "$DIR/log/slurmd.out" 2>&1 &
    echo $! > "$DIR/slurmd.pid"
    for _ in $(seq 150); do
        sinfo -h -o %t 2>/dev/null | grep -q idle && { log "up: $(sinfo -h -o '%N %c CPUs %t')"; return; }
        sleep 0.2
    done
    log "no idle node after 30 s; logs in $DIR/log"
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 1
}

stop_daemons() {
    local name pid
    for name in slurmd slurmctld munged; do
        if alive "$name"; then
            pid=$(cat "$DIR/$name.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$DIR/$name.pid"
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop_daemons; log "stopped" ;;
    status) sinfo || true; for n in munged slurmctld slurmd; do
                echo "$n: $(alive $n && cat "$DIR/$n.pid" || echo 'not running')"; done ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
