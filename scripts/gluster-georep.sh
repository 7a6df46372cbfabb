#!/bin/bash
# GlusterFS's own geo-replication, measured on this machine, as a baseline.
#
# Everything runs inside a private network namespace ($NS, loopback only) and a private
# mount namespace in which tmpfs hides /run, /var/lib/glusterd, /var/lib/misc and /root,
# and /var/log/glusterfs is bound to $W/log: the system's glusterd paths, root's ~/.ssh and
# any other glusterd (e.g. a test suite's on 127.0.0.1:24007 of the main namespace) are not
# touched. A private sshd (own config and host key) listens on 127.0.0.1:22 of the netns.
#
# Usage:  scripts/gluster-georep.sh [WORKDIR]   (as root; WORKDIR default /tmp/gluster-georep)
#         scripts/bench.sh gluster runs it with GLUSTER_GEOREP=1, next to georep.
# Env:    GGR_RSYNC=auto|system|3.2.7   auto (default): test the installed rsync first and
#                                       switch to 3.2.7 (bind-mounted inside the private
#                                       mount namespace only) if it writes empty files
#         GGR_FILES=10000 GGR_DIRS=100 GGR_SIZE=4096 GGR_PROBES=10
#         GGR_NETNS=glgeorep
#         GGR_TEST_STUCK=1  test: freeze (SIGSTOP) one worker to exercise the stuck-worker cure
#         GGR_HOLD=1  debugging: stop after setup until $W/hold is removed (ns.sh runs
#                     commands inside the held namespaces)
# Output: progress on stderr, results as key=value lines on stdout at the end
#         (also in $W/results.txt); logs stay in $W/log, $W/run.log after the run.
#
# Geo-rep settings are Gluster's defaults (sync_method rsync, change_interval 5,
# sync_jobs 3, changelog.rollover-time 15). Two findings handled here:
#  * Debian 12's rsync 3.5.0+ds1-0+deb12u1 makes geo-rep create the files on the slave
#    but leave them EMPTY (rsync exits 0; with log_rsync_performance it reports
#    "Number of regular files transferred: 0"). rsync 3.2.7-1+deb12u6 (bookworm main) works.
#    It is unpacked under $PKG (apt-get download + dpkg-deb -x) and bind-mounted over
#    /usr/bin/rsync in the private mount namespace only: the system's rsync is not changed.
#  * A worker whose libgfchangelog never receives a changelog event after it starts
#    stays "Active / Changelog Crawl" and syncs nothing (details at fix_stuck below).
#    20-file checks find it (files missing on the slave, on that worker's brick); it is
#    restarted (SIGTERM, the monitor respawns it) until a check passes 20/20, before
#    the benchmarks. The rsync switch needs no restart (rsync runs afresh per batch).
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C
unset PYTHONPATH PYENV_VERSION

HERE=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = "__inner" ]; then DIR=$2; else DIR=${1:-/tmp/gluster-georep}; fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
NS=${GGR_NETNS:-glgeorep}
W=$DIR/work
B=$DIR/bricks
PKG=$DIR/pkg
RSYNC327=$PKG/rsync327/usr/bin/rsync
RSYNC327_VER=3.2.7-1+deb12u6
GSYNCD=/usr/lib/x86_64-linux-gnu/glusterfs/gsyncd
MV=gmaster
SV=gslave
H=127.1              # gluster refuses "localhost"/"127.0.0.1" as brick hosts; 127.1 == 127.0.0.1
SESSION=(volume geo-replication $MV $H::$SV)
FILES=${GGR_FILES:-10000}
DIRS=${GGR_DIRS:-100}
SIZE=${GGR_SIZE:-4096}
PROBES=${GGR_PROBES:-10}
RSYNC_MODE=${GGR_RSYNC:-auto}

log() { echo "[$(date +%T)] $*" >&2; }
res() { echo "$*" >> "$W/results.txt"; }

# ------------------------------------------------------------------------------------------
# Inside the namespaces
# ------------------------------------------------------------------------------------------
G() { gluster --mode=script "$@"; }

geo_status() { G "${SESSION[@]}" status 2>&1; }

wait_active() { # wait until every worker is Active and in a crawl; $1 = timeout s
    local end=$((SECONDS + $1)) st
    while [ $SECONDS -lt $end ]; do
        st=$(geo_status)
        if echo "$st" | grep -q "Active" && ! echo "$st" | grep -qE "Faulty|Initializing|Created|Stopped" \
            && echo "$st" | grep -qE "Changelog Crawl|History Crawl|Hybrid Crawl"; then
            echo "$st" >&2
            return 0
        fi
        sleep 2
    done
    echo "$st" >&2
    return 1
}

inner_teardown() {
    log "inner teardown"
    G "${SESSION[@]}" stop force >/dev/null 2>&1
    for m in "$W/mnt/master" "$W/mnt/slave"; do
        mountpoint -q "$m" && umount -l "$m"
    done
    G volume stop $MV force >/dev/null 2>&1
    G volume stop $SV force >/dev/null 2>&1
    [ -f /run/sshd-georep.pid ] && kill "$(cat /run/sshd-georep.pid)" 2>/dev/null
    [ -f /run/glusterd.pid ] && kill "$(cat /run/glusterd.pid)" 2>/dev/null
    # the outer script kills whatever else is left in the netns, by pid
}

inner() {
    cd "$DIR" || exit 1
    exec 2>>"$W/run.log"
    log "inner: pid $$, netns $(ip netns identify $$ 2>/dev/null)"
    # ---- private mounts (this mount namespace only; propagation private) ----
    mount --make-rprivate / || { log "make-rprivate failed"; exit 1; }
    mount -t tmpfs -o mode=755 ggr-run /run || exit 1
    mkdir -p /run/gluster /run/sshd /run/lock && chmod 1777 /run/lock
    mount -t tmpfs -o mode=755 ggr-glusterd /var/lib/glusterd || exit 1
    cp -a "$W/glusterd-skel/." /var/lib/glusterd/ || exit 1
    mkdir -p "$W/log" && mount --bind "$W/log" /var/log/glusterfs || exit 1
    mount -t tmpfs -o mode=755 ggr-misc /var/lib/misc || exit 1
    mount -t tmpfs -o mode=700 ggr-root /root || exit 1
    trap inner_teardown EXIT

    ip addr show lo >&2
    res "rsync_system_version=$(rsync --version | head -1 | awk '{print $3}')"

    # ---- glusterd ----
    log "starting glusterd"
    glusterd -p /run/glusterd.pid -l /var/log/glusterfs/glusterd.log || { log "glusterd failed"; exit 1; }
    local end=$((SECONDS + 30))
    until G pool list >/dev/null 2>&1; do
        [ $SECONDS -gt $end ] && { log "glusterd did not answer"; exit 1; }
        sleep 0.5
    done
    G --version | head -1 >&2
    res "glusterfs_version=$(G --version | head -1 | awk '{print $2}')"

    # ---- volumes ----
    log "creating volumes"
    G volume create $MV $H:$B/m1 $H:$B/m2 force >&2 || exit 1
    G volume create $SV $H:$B/s1 $H:$B/s2 force >&2 || exit 1
    G volume start $MV >&2 || exit 1
    G volume start $SV >&2 || exit 1
    G volume info >&2

    # ---- private sshd on 127.0.0.1:22 of this netns, root's keys in the tmpfs /root ----
    log "starting private sshd"
    mkdir -p "$W/ssh" /root/.ssh && chmod 700 /root/.ssh
    ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/host_ed25519" -C ggr-host >/dev/null </dev/null || exit 1
    ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519 -C ggr-root >/dev/null </dev/null || exit 1
    cp /root/.ssh/id_ed25519.pub /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys
    cat > "$W/ssh/sshd_config" <<EOF
Port 22
ListenAddress 127.0.0.1
HostKey $W/ssh/host_ed25519
PidFile /run/sshd-georep.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
MaxStartups 200:30:400
MaxSessions 100
LogLevel INFO
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
    /usr/sbin/sshd -t -f "$W/ssh/sshd_config" || exit 1
    /usr/sbin/sshd -f "$W/ssh/sshd_config" -E "$W/log/sshd.log" || { log "sshd failed"; exit 1; }
    ssh -oBatchMode=yes -oStrictHostKeyChecking=no root@$H 'echo ssh-ok; id -u' >&2 || { log "ssh to $H failed"; exit 1; }

    # ---- rsync: pick the version ----
    use_rsync327() {
        [ -x "$RSYNC327" ] || { log "no $RSYNC327"; return 1; }
        mount --bind "$RSYNC327" /usr/bin/rsync || return 1
        log "rsync in this mount namespace is now: $(rsync --version | head -1)"
    }
    if [ "$RSYNC_MODE" = "3.2.7" ]; then use_rsync327 || exit 1; fi

    # ---- geo-replication session ----
    log "gsec_create"
    G system:: execute gsec_create >&2 || { log "gsec_create failed"; exit 1; }
    log "geo-rep create push-pem"
    if ! G "${SESSION[@]}" create push-pem >&2; then
        log "create push-pem failed"; cat "$W/log/geo-replication/gverify-"*.log >&2 2>/dev/null; exit 1
    fi
    # the gsync-create post hook (which pushes the pem key into root's authorized_keys over
    # ssh and sets features.read-only on the slave) runs asynchronously: starting before it
    # has finished makes the monitor fail with "Permission denied (publickey)" and stop.
    local end=$((SECONDS + 60))
    until grep -q "command=" /root/.ssh/authorized_keys 2>/dev/null \
        && G volume get $SV features.read-only 2>/dev/null | grep -qE "features.read-only +on"; do
        [ $SECONDS -gt $end ] && { log "push-pem hook did not finish"; exit 1; }
        sleep 0.5
    done
    log "push-pem hook done: $(grep -c command= /root/.ssh/authorized_keys) forced-command keys in authorized_keys"
    G "${SESSION[@]}" config >"$W/georep-config-defaults.txt" 2>&1
    res "georep_sync_method=$(awk -F: '$1=="sync_method"{print $2}' "$W/georep-config-defaults.txt")"
    res "georep_change_interval=$(awk -F: '$1=="change_interval"{print $2}' "$W/georep-config-defaults.txt")"
    res "georep_sync_jobs=$(awk -F: '$1=="sync_jobs"{print $2}' "$W/georep-config-defaults.txt")"
    res "changelog_rollover_time=$(G volume get $MV changelog.rollover-time | awk '$1=="changelog.rollover-time"{print $2}')"
    res "georep_config=defaults"
    log "geo-rep start"
    G "${SESSION[@]}" start >&2 || { log "geo-rep start failed"; exit 1; }
    local t0=$SECONDS
    wait_active 180 || { log "geo-rep did not become Active"; exit 1; }
    res "georep_start_to_active_s=$((SECONDS - t0))"

    # ---- client mounts ----
    mkdir -p "$W/mnt/master" "$W/mnt/slave"
    mount -t glusterfs $H:/$MV "$W/mnt/master" || { log "mount master failed"; exit 1; }
    mount -t glusterfs $H:/$SV "$W/mnt/slave" || { log "mount slave failed"; exit 1; }
    grep -E "fuse.glusterfs" /proc/mounts >&2

    if [ -n "${GGR_HOLD:-}" ]; then  # debugging: keep the setup up until $W/hold is removed
        echo $$ > "$W/hold"; log "holding (nsenter -t $$ -n -m); rm $W/hold to go on"
        while [ -e "$W/hold" ]; do sleep 1; done
    fi
    # ---- does the installed rsync write empty files? and: is every worker delivering? ----
    # check20 LABEL: 20 files x SIZE through the master mount, up to 30 s for the slave
    # (a working session takes 9-19 s here: rollover 15 s + change_interval 5 s).
    # Sets C_OK C_EMPTY C_WRONG C_MISSING C_MS.
    check20() {
        /usr/bin/python3 "$HERE/gluster-georep-bench.py" check "$W/mnt/master" "$W/mnt/slave" 20 "$SIZE" 30 >"$W/check-$1.txt"
        C_OK=$(sed -n 's/^check_ok=//p' "$W/check-$1.txt")
        C_EMPTY=$(sed -n 's/^check_empty=//p' "$W/check-$1.txt")
        C_WRONG=$(sed -n 's/^check_wrong=//p' "$W/check-$1.txt")
        C_MISSING=$(sed -n 's/^check_missing=//p' "$W/check-$1.txt")
        C_MS=$(sed -n 's/^check_ms=//p' "$W/check-$1.txt")
        log "check $1 (rsync $(rsync --version | head -1 | awk '{print $3}')): ok=$C_OK empty=$C_EMPTY wrong=$C_WRONG missing=$C_MISSING ms=$C_MS"
        res "check_$1=rsync:$(rsync --version | head -1 | awk '{print $3}'),ok:$C_OK,empty:$C_EMPTY,wrong:$C_WRONG,missing:$C_MISSING,ms:$C_MS"
    }
    # A stuck worker (Gluster 10.3, seen here in 30-65% of worker starts): its brick's
    # changelog translator connects back to the worker's libgfchangelog socket (the
    # connection is ESTABLISHED) but never sends it a single changelog event (no "seq:" in
    # the worker's changes log at DEBUG), so the worker stays "Active / Changelog Crawl"
    # and syncs nothing, for ever. Likely cause: a race in the brick's
    # changelog-ev-handle.c: changelog_ev_connector() moves the new client to the wait
    # queue *after* rpc_clnt_start(), and the RPC_CLNT_CONNECT notification (which moves
    # it to the active list that events go to) can run first on an epoll thread.
    # Shows as files *missing* on the slave. Cure: SIGTERM that worker (gsyncd exits 1, its
    # monitor restarts it after 10 s), i.e. register again. Counted in
    # georep_restarts_for_stuck_worker.
    worker_pid() { # $1 = brick path -> pid of its gsyncd worker in this netns
        local pid args
        for pid in $(ps -eo pid=); do
            [ "$(readlink /proc/$pid/ns/net 2>/dev/null)" = "$(readlink /proc/self/ns/net)" ] || continue
            args=$(tr '\0' ' ' < /proc/$pid/cmdline 2>/dev/null)
            case "$args" in
                *"gsyncd.py worker $MV $H::$SV "*"--local-path $1 "*) echo "$pid" ;;
            esac
        done
    }
    fix_stuck() { # $1 = check label: restart the workers of the bricks holding missing files
        local rel b pid bricks=""
        for rel in $(sed -n 's/^check_missing_list=//p' "$W/check-$1.txt" | tr ',' ' '); do
            for b in $B/m1 $B/m2; do
                [ -e "$b/$rel" ] && case " $bricks " in *" $b "*) ;; *) bricks="$bricks $b" ;; esac
            done
        done
        [ -n "$bricks" ] || { log "missing files on no master brick?"; return 1; }
        for b in $bricks; do
            pid=$(worker_pid "$b")
            log "worker of $b is stuck (no changelog events); SIGTERM to pid ${pid:-?}"
            [ -n "$pid" ] && { kill -TERM $pid; kill -CONT $pid; }  # CONT: see GGR_TEST_STUCK
            restarts=$((restarts + 1))
        done
        sleep 12  # the monitor restarts a worker 10 s after it exits
        wait_active 150
    }
    if [ -n "${GGR_TEST_STUCK:-}" ]; then  # test of the above: freeze m1's worker
        log "GGR_TEST_STUCK: SIGSTOP to the worker of $B/m1 (pid $(worker_pid $B/m1))"
        kill -STOP $(worker_pid $B/m1)
        res "test_stuck_worker_simulated=yes"
    fi
    local restarts=0 attempt empty_sys="" gate_ok=no sysver
    sysver=$(rsync --version | head -1 | awk '{print $3}')
    if [ "$RSYNC_MODE" = "auto" ] || [ "$RSYNC_MODE" = "system" ]; then
        for attempt in 0 1 2 3 4 5; do
            check20 "system_rsync_$attempt"
            if [ "${C_EMPTY:-0}" -gt 0 ] || [ "${C_WRONG:-0}" -gt 0 ]; then
                empty_sys=yes
                [ "${C_MISSING:-0}" -gt 0 ] && fix_stuck "system_rsync_$attempt"
                break
            fi
            if [ "$C_OK" = 20 ]; then empty_sys=no; gate_ok=yes; break; fi
            [ $attempt = 5 ] && break
            fix_stuck "system_rsync_$attempt" || exit 1
        done
        res "empty_files_with_system_rsync=${empty_sys:-unknown}"
        [ "$sysver" = 3.5.0 ] && res "empty_files_with_3_5_0=${empty_sys:-unknown}"
        if [ "$empty_sys" != no ] && [ "$RSYNC_MODE" = "auto" ]; then
            # no session restart needed: gsyncd runs rsync afresh for every batch, on both
            # ends (the slave end through our sshd, in this mount namespace too)
            log "switching to rsync 3.2.7 (bind mount in this mount namespace only)"
            use_rsync327 || exit 1
        fi
    fi
    if [ $gate_ok = no ]; then
        for attempt in 0 1 2 3 4 5 6 7; do
            check20 "gate_$attempt"
            [ "$C_OK" = 20 ] && { gate_ok=yes; break; }
            [ $attempt = 7 ] && break
            if [ "${C_MISSING:-0}" -gt 0 ]; then
                fix_stuck "gate_$attempt" || exit 1
            fi
        done
    fi
    res "georep_restarts_for_stuck_worker=$restarts"
    [ $gate_ok = yes ] || { log "geo-rep never delivered 20/20 files; giving up"; exit 1; }
    rs_used=$(rsync --version | head -1 | awk '{print $3}')
    res "rsync_version=$rs_used"
    log "using rsync $rs_used"

    # ---- Benchmark A: FILES x SIZE into DIRS directories, until all verified on the slave ----
    sleep 5
    log "benchmark A: $FILES files x $SIZE B in $DIRS dirs"
    /usr/bin/python3 "$HERE/gluster-georep-bench.py" bulk "$W/mnt/master" "$W/mnt/slave" "$FILES" "$DIRS" "$SIZE" 0.5 300 >"$W/bulk.txt"
    cat "$W/bulk.txt" >&2
    cat "$W/bulk.txt" >> "$W/results.txt"
    res "gluster_georep_${FILES}_files_ms=$(sed -n 's/^bulk_sync_ms=//p' "$W/bulk.txt")"
    geo_status >&2

    # ---- Benchmark B: change -> visible latency ----
    log "waiting 20 s for geo-rep to go idle"
    sleep 20
    log "benchmark B: $PROBES probes"
    /usr/bin/python3 "$HERE/gluster-georep-bench.py" probe "$W/mnt/master" "$W/mnt/slave" "$PROBES" 0.1 60 >"$W/probe.txt"
    cat "$W/probe.txt" >&2
    cat "$W/probe.txt" >> "$W/results.txt"
    res "gluster_latency_median_ms=$(sed -n 's/^latency_median_ms=//p' "$W/probe.txt")"
    res "gluster_latency_max_ms=$(sed -n 's/^latency_max_ms=//p' "$W/probe.txt")"
    G "${SESSION[@]}" status detail >&2
    log "done"
    exit 0
}

# ------------------------------------------------------------------------------------------
# Outside: prepare, create the netns, run the inside, tear down
# ------------------------------------------------------------------------------------------
outer_cleanup() {
    local pids p i
    trap - EXIT INT TERM
    if ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$NS"; then
        for i in 1 2 3 4 5 6 7 8 9 10; do
            pids=$(ip netns pids "$NS" 2>/dev/null)
            [ -z "$pids" ] && break
            if [ $i -lt 6 ]; then
                for p in $pids; do kill -TERM "$p" 2>/dev/null; done
            else
                for p in $pids; do kill -KILL "$p" 2>/dev/null; done
            fi
            sleep 1
        done
        pids=$(ip netns pids "$NS" 2>/dev/null)
        [ -n "$pids" ] && log "WARNING: still in netns $NS: $pids"
        ip netns del "$NS" && log "netns $NS deleted"
    fi
    # temp dirs gverify.sh / gsyncd make in /tmp (empty mount points once their namespace is gone)
    for d in /tmp/gverify.sh.* /tmp/gsyncd-aux-mount-*; do
        [ -d "$d" ] && rmdir "$d" 2>/dev/null
    done
}

outer() {
    [ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
    for c in glusterd gluster glusterfs /usr/sbin/sshd ssh ssh-keygen rsync ip unshare /usr/bin/python3 "$GSYNCD"; do
        command -v "$c" >/dev/null || { echo "missing: $c" >&2; exit 1; }
    done
    if ip netns list | awk '{print $1}' | grep -qx "$NS"; then
        echo "netns $NS exists already (a previous run?); cleaning it up" >&2
        outer_cleanup
    fi
    rm -rf "$W" "$B"
    mkdir -p "$W/log" "$W/glusterd-skel" "$B"
    : > "$W/results.txt"
    : > "$W/run.log"
    # glusterd needs the packaged hooks (gsync-create/post pushes the pem keys) and groups
    cp -a /var/lib/glusterd/hooks /var/lib/glusterd/groups "$W/glusterd-skel/"
    mkdir -p "$W/glusterd-skel/geo-replication"
    # rsync 3.2.7 from bookworm main, unpacked here (not installed): bind-mounted over
    # /usr/bin/rsync inside the private mount namespace if the installed one misbehaves
    if [ ! -x "$RSYNC327" ] && [ "$RSYNC_MODE" != system ]; then
        mkdir -p "$PKG"
        (cd "$PKG" && apt-get download "rsync=$RSYNC327_VER" >/dev/null 2>&1 \
            && dpkg-deb -x "$PKG"/rsync_3.2.7*.deb "$PKG/rsync327") || log "could not fetch rsync $RSYNC327_VER"
    fi

    echo "host_loadavg_at_start=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)" >> "$W/results.txt"
    trap outer_cleanup EXIT
    trap 'exit 130' INT TERM
    ip netns add "$NS" || exit 1
    ip -n "$NS" link set lo up || exit 1
    log "netns $NS up; running inside (log: $W/run.log)"
    local t0=$SECONDS rc
    tail -n +1 -F "$W/run.log" 2>/dev/null >&2 &
    local tailpid=$!
    timeout -k 10 900 ip netns exec "$NS" unshare -m --propagation private "$HERE/gluster-georep.sh" __inner "$DIR"
    rc=$?
    sleep 1; kill "$tailpid" 2>/dev/null; wait "$tailpid" 2>/dev/null
    outer_cleanup
    # the bricks (~250 MB after a run) go; logs stay in $W
    [ -z "$(ip netns pids "$NS" 2>/dev/null)" ] && rm -rf "$B"
    echo "host_loadavg_at_end=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)" >> "$W/results.txt"
    echo "inner_exit_code=$rc" >> "$W/results.txt"
    echo "total_runtime_s=$((SECONDS - t0))" >> "$W/results.txt"
    echo "==== results ====" >&2
    cat "$W/results.txt"
    return $rc
}

if [ "${1:-}" = "__inner" ]; then inner; else outer; fi
