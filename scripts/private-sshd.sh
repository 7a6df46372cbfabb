# Sourced by demo.sh and bench.sh: a private OpenSSH sshd on a loopback port, with its own host
# key, config and authorized_keys (never the system sshd), and an operator key it accepts.
# Usage: start_private_sshd DIR PORT DR_GEOREP_HOME   -> sets SSHD_PID, OPERATOR_KEY, SSH_OPTS
start_private_sshd() {
    local dir=$1 port=$2 dr_home=$3
    local sshd
    sshd=$(command -v sshd || ls /usr/sbin/sshd 2>/dev/null) || return 1
    mkdir -p "$dir" /run/sshd 2>/dev/null || true
    ssh-keygen -q -t ed25519 -N "" -f "$dir/host_key"
    ssh-keygen -q -t ed25519 -N "" -f "$dir/operator"
    cp "$dir/operator.pub" "$dir/authorized_keys"
    cat > "$dir/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin yes
SetEnv GEOREP_AUTHORIZED_KEYS=$dir/authorized_keys GEOREP_HOME=$dr_home GEOREP_NODE=dr1
LogLevel ERROR
CFG
    "$sshd" -D -f "$dir/sshd_config" -E "$dir/sshd.log" &
    SSHD_PID=$!
    OPERATOR_KEY=$dir/operator
    SSH_OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes
        -o IdentitiesOnly=yes -o LogLevel=ERROR -p "$port" -i "$OPERATOR_KEY")
    for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0; sleep 0.05; done
    echo "sshd did not start: $(cat "$dir/sshd.log")" >&2
    return 1
}
