#!/usr/bin/env bash
# A private glusterd for the tests: bound to 127.0.0.1, its own working directory, socket and
# pid file under DIR, never the system one's state.
#
#   scripts/glusterd.sh start DIR   start it (or find it running); prints its socket
#   scripts/glusterd.sh stop DIR    stop its volumes and bricks, then glusterd
#
# Bricks are named 127.1:/path and 127.0.1:/path (two "nodes" that are both this host's
# loopback: gluster refuses the names localhost and 127.0.0.1 for bricks).
set -euo pipefail
cmd=${1:?start|stop} dir=${2:?DIR}
mkdir -p "$dir/wd" "$dir/run" "$dir/log"
sock=$dir/run/glusterd.socket
pidf=$dir/run/glusterd.pid
g() { gluster --glusterd-sock="$sock" --mode=script "$@"; }
running() { [ -s "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null && [ -S "$sock" ]; }

case $cmd in
start)
    if running; then
        echo "$sock"
        exit 0
    fi
    if ! command -v glusterd >/dev/null; then
        echo "glusterd is not installed: scripts/test.sh installs glusterfs-server" >&2
        exit 1
    fi
    [ -c /dev/fuse ] || { echo "/dev/fuse is missing: Gluster mounts need FUSE" >&2; exit 1; }
    # A glusterd the package started (on 0.0.0.0 or 127.0.0.1) holds the port glusterd's
    # clients and bricks use: on a test machine it is stopped; anything else there is an error.
    holder=$(ss -ltnpH 2>/dev/null | awk '$4 ~ /:24007$/' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
    if [ -n "$holder" ]; then
        if [ "$(cat /proc/"$holder"/comm 2>/dev/null)" = glusterd ]; then
            echo "stopping glusterd (pid $holder) that holds port 24007: the tests run their own" >&2
            kill "$holder"
            for _ in $(seq 1 50); do kill -0 "$holder" 2>/dev/null || break; sleep 0.1; done
        else
            echo "port 24007 is taken by $(cat /proc/"$holder"/comm 2>/dev/null) (pid $holder): glusterd needs it" >&2
            exit 1
        fi
    fi
    cat >"$dir/glusterd.vol" <<EOF
volume management
    type mgmt/glusterd
    option working-directory $dir/wd
    option transport-type socket
    option transport.socket.bind-address 127.0.0.1
    option transport.socket.listen-port 24007
    option transport.socket.keepalive-time 10
    option transport.socket.keepalive-interval 2
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
    option glusterd-sockfile $sock
end-volume
EOF
    glusterd -f "$dir/glusterd.vol" -p "$pidf" -l "$dir/log/glusterd.log"
    for _ in $(seq 1 100); do
        if running && g volume list >/dev/null 2>&1; then
            echo "$sock"
            exit 0
        fi
        sleep 0.1
    done
    echo "glusterd did not start: see $dir/log/glusterd.log" >&2
    tail -20 "$dir/log/glusterd.log" >&2 || true
    exit 1
    ;;
stop)
    if running; then
        for v in $(g volume list 2>/dev/null | grep -v '^No volumes'); do
            g volume stop "$v" force >/dev/null 2>&1 || true
            g volume delete "$v" >/dev/null 2>&1 || true
        done
        kill "$(cat "$pidf")" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$(cat "$pidf")" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$pidf"
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
