#!/usr/bin/env bash
# A testbed of hosts made of network namespaces, for trying the multi-node procedures of
# docs/runbook.md by hand (tests/it/util/net.rs builds the same for the tests):
#   master nodes n1 (10.213.0.1) and n2 (10.213.0.2), DR host dr1 (10.213.0.3) with its own sshd,
#   on a bridge in a namespace of its own. Only these namespaces' addresses are used.
#
#   scripts/testbed.sh up [DIR]        build it (state under DIR, default a new /tmp/georep-testbed.XXXXXX)
#   scripts/testbed.sh on HOST CMD...  run CMD on HOST (georep gets HOST's home and node name)
#   scripts/testbed.sh partition HOST  cut HOST off (links stay up: connections go half-open)
#   scripts/testbed.sh heal HOST
#   scripts/testbed.sh delay HOST MS   add MS of delay to what HOST sends (tc netem)
#   scripts/testbed.sh down            stop every process on the hosts, remove the namespaces
#
# Example, a replica-2 volume on n1 and n2 replicating to dr1 (D: the directory `up` printed):
#   scripts/testbed.sh up
#   for n in n1 n2; do scripts/testbed.sh on $n georep volume create gv replica 2 \
#       n1:$D/n1/brick n2:$D/n2/brick; done
#   for n in n1 n2; do scripts/testbed.sh on $n georep create gv root@10.213.0.3::$D/dr1/volume \
#       push-pem --identity $D/dr1/sshd/operator; done
#   scripts/testbed.sh on n1 georep start gv root@10.213.0.3::$D/dr1/volume   (then n2)
#   scripts/testbed.sh partition n1; watch: scripts/testbed.sh on n2 georep status --watch
set -euo pipefail
cd "$(dirname "$0")/.."
# Where `up` recorded the state directory: /run is root's own, unlike /tmp.
POINTER=/run/georep-testbed.state
HOSTS=(n1 n2 dr1)
SW=georep-sw

ns() { echo "georep-$1"; }
index_of() {
    local i
    for i in "${!HOSTS[@]}"; do [ "${HOSTS[$i]}" = "$1" ] && { echo "$i"; return; }; done
    echo "unknown host $1 (hosts: ${HOSTS[*]})" >&2
    exit 2
}
port() { echo "gtb-p$(index_of "$1")"; }

georep_bin() {
    if command -v georep >/dev/null; then command -v georep
    elif [ -x target/release/georep ]; then echo "$PWD/target/release/georep"
    else cargo build --release --quiet && echo "$PWD/target/release/georep"
    fi
}

up() {
    if ip netns list | grep -q "^$SW"; then
        echo "the testbed is up already (scripts/testbed.sh down first)" >&2
        exit 1
    fi
    command -v ip >/dev/null || { echo "needs iproute2 (apt-get install iproute2)" >&2; exit 1; }
    # A directory of our own: the root sshd below trusts the keys in it.
    if [ -n "${1:-}" ]; then
        STATE=$1
        mkdir -p "$STATE"
        [ "$(stat -c %u "$STATE")" = "$(id -u)" ] || { echo "$STATE is not ours" >&2; exit 1; }
    else
        STATE=$(mktemp -d /tmp/georep-testbed.XXXXXX)
    fi
    chmod 700 "$STATE"
    echo "$STATE" > "$POINTER"
    ip netns add "$SW"
    ip -n "$SW" link add br0 type bridge
    ip -n "$SW" link set br0 up
    for i in "${!HOSTS[@]}"; do
        h=${HOSTS[$i]}
        ip netns add "$(ns "$h")"
        ip link add "gtb-v$i" netns "$(ns "$h")" type veth peer name "gtb-p$i" netns "$SW"
        ip -n "$SW" link set "gtb-p$i" master br0
        ip -n "$SW" link set "gtb-p$i" up
        ip -n "$(ns "$h")" addr add "10.213.0.$((i + 1))/24" dev "gtb-v$i"
        ip -n "$(ns "$h")" link set "gtb-v$i" up
        ip -n "$(ns "$h")" link set lo up
        mkdir -p "$STATE/$h/home" "$STATE/$h/brick"
    done
    mkdir -p "$STATE/dr1/volume"
    # dr1's own sshd, on port 22 of its own stack.
    local d=$STATE/dr1/sshd
    mkdir -p "$d" /run/sshd
    ssh-keygen -q -t ed25519 -N "" -f "$d/host_key" <<<y >/dev/null
    ssh-keygen -q -t ed25519 -N "" -f "$d/operator" <<<y >/dev/null
    cp "$d/operator.pub" "$d/authorized_keys"
    cat > "$d/sshd_config" <<CFG
Port 22
ListenAddress 10.213.0.3
HostKey $d/host_key
PidFile $d/sshd.pid
AuthorizedKeysFile $d/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin yes
SetEnv GEOREP_AUTHORIZED_KEYS=$d/authorized_keys GEOREP_HOME=$STATE/dr1/home GEOREP_NODE=dr1
LogLevel ERROR
CFG
    ip netns exec "$(ns dr1)" "$(command -v sshd || echo /usr/sbin/sshd)" -f "$d/sshd_config" -E "$d/sshd.log"
    echo "testbed up under $STATE: n1 10.213.0.1, n2 10.213.0.2, dr1 10.213.0.3 (sshd; operator key $d/operator)"
}

on() {
    local h=$1; shift
    index_of "$h" >/dev/null
    local state; state=$(cat "$POINTER" 2>/dev/null) || { echo "the testbed is not up" >&2; exit 1; }
    local cmd=("$@")
    [ "${cmd[0]}" = georep ] && cmd[0]=$(georep_bin)
    exec ip netns exec "$(ns "$h")" env GEOREP_HOME="$state/$h/home" GEOREP_NODE="$h" "${cmd[@]}"
}

down() {
    for h in "${HOSTS[@]}" sw; do
        local n=georep-$h
        ip netns list | grep -q "^$n" || continue
        for _ in 1 2 3; do
            pids=$(ip netns pids "$n")
            [ -z "$pids" ] && break
            kill -9 $pids 2>/dev/null || true
            sleep 0.2
        done
        ip netns del "$n"
    done
    local state; state=$(cat "$POINTER" 2>/dev/null || echo "the directory up printed")
    rm -f "$POINTER"
    echo "testbed down (its files stay in $state)"
}

case "${1:-}" in
    up) up "${2:-}" ;;
    on) shift; on "$@" ;;
    partition) ip -n "$SW" link set "$(port "$2")" nomaster; echo "$2 partitioned" ;;
    heal) ip -n "$SW" link set "$(port "$2")" master br0; echo "$2 healed" ;;
    delay) ip netns exec "$(ns "$2")" tc qdisc replace dev "gtb-v$(index_of "$2")" root netem delay "${3}ms" 2>/dev/null ||
        { echo "tc netem is not available on this kernel (module sch_netem)" >&2; exit 1; } ;;
    down) down ;;
    *) sed -n '2,22p' "$0"; exit 2 ;;
esac
