#!/usr/bin/env bash
# A real geo-replication session over SSH on this host. The "DR site" is a private OpenSSH sshd
# on a loopback port when sshd is installed (its own config, host key and authorized_keys; never
# the system sshd), otherwise `georep serve`. Builds georep, makes a sample master volume,
# sets up keys with `create push-pem`, replicates, changes the master while the session runs,
# and ends with the status table. Everything lives in a directory of its own per run ($DEMO_DIR,
# default a new mktemp directory); the demo stops only what it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo: cargo is required (install Rust with rustup)" >&2; exit 1; }
command -v cc >/dev/null || { apt-get update -qq && apt-get install -y -qq gcc; }

if [ -x target/release/georep ]; then
    echo "== building georep (release; seconds when only a little changed)"
else
    echo "== building georep (release; the first build takes about 3 to 5 minutes on 2 cores)"
fi
cargo build --release --locked
GEOREP=$PWD/target/release/georep
if [ -n "${DEMO_DIR:-}" ]; then
    DEMO=$DEMO_DIR
    mkdir -p "$DEMO"
    [ -z "$(ls -A "$DEMO")" ] || { echo "demo: $DEMO is not empty: give an empty or new DEMO_DIR" >&2; exit 1; }
else
    DEMO=$(mktemp -d /tmp/georep-demo.XXXXXX)
fi
echo "== demo directory: $DEMO"
mkdir -p "$DEMO/dr" "$DEMO/ssh"
export GEOREP_HOME=$DEMO/master-home GEOREP_NODE=${GEOREP_NODE:-$(hostname)}
DR_HOME=$DEMO/dr-home
M=$DEMO/site-a/brick1 S=$DEMO/site-b/dr1
USER_NAME=$(id -un)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PIDS=()
SLAVE=""
cleanup() {
    # The session first (clean stop), then the DR site's server: only what this run started.
    [ -n "$SLAVE" ] && "$GEOREP" stop gv0 "$SLAVE" force >/dev/null 2>&1 || true
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
        wait "${PIDS[i]}" 2>/dev/null || true
    done
    PIDS=()
    [ -n "$SLAVE" ] && "$GEOREP" delete gv0 "$SLAVE" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== DR site: volume gv0-dr on $S"
mkdir -p "$S"
GEOREP_HOME=$DR_HOME GEOREP_NODE=dr1 "$GEOREP" volume create gv0-dr "$S"
ssh-keygen -q -t ed25519 -N "" -f "$DEMO/ssh/operator"
SLAVE="$USER_NAME@127.0.0.1:$PORT::gv0-dr"
SSHD=$(command -v sshd || ls /usr/sbin/sshd 2>/dev/null || true)
[ "${DEMO_TRANSPORT:-}" = serve ] && SSHD=""
if [ -n "$SSHD" ]; then
    echo "== DR site: private OpenSSH sshd on 127.0.0.1:$PORT"
    mkdir -p /run/sshd 2>/dev/null || true
    ssh-keygen -q -t ed25519 -N "" -f "$DEMO/ssh/host_key"
    cp "$DEMO/ssh/operator.pub" "$DEMO/ssh/authorized_keys"
    cat > "$DEMO/ssh/sshd_config" <<CFG
Port $PORT
ListenAddress 127.0.0.1
HostKey $DEMO/ssh/host_key
PidFile $DEMO/ssh/sshd.pid
AuthorizedKeysFile $DEMO/ssh/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin yes
SetEnv GEOREP_AUTHORIZED_KEYS=$DEMO/ssh/authorized_keys GEOREP_HOME=$DR_HOME GEOREP_NODE=dr1
LogLevel ERROR
CFG
    "$SSHD" -D -f "$DEMO/ssh/sshd_config" -E "$DEMO/ssh/sshd.log" &
    PIDS+=($!)
else
    echo "== DR site: no OpenSSH sshd here, using georep serve on 127.0.0.1:$PORT"
    : > "$DEMO/ssh/authorized_keys"
    GEOREP_HOME=$DR_HOME GEOREP_NODE=dr1 "$GEOREP" serve --listen "127.0.0.1:$PORT" \
        --host-key "$DEMO/ssh/serve_host_key" --authorized-keys "$DEMO/ssh/authorized_keys" > "$DEMO/ssh/serve.out" &
    PIDS+=($!)
fi
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done

echo "== master site: volume gv0 on $M with a sample tree"
"$GEOREP" volume create gv0 "$M"
mkdir -p "$M/projects/apollo/src" "$M/photos/2026" "$M/empty"
for i in $(seq 1 500); do echo "photo $i" > "$M/photos/2026/img$i.jpg"; done
printf 'fn main() { println!("hello"); }\n' > "$M/projects/apollo/src/main.rs"
head -c 50M /dev/urandom > "$M/projects/apollo/dataset.bin"
seq 1 200000 > "$M/projects/apollo/numbers.txt"
ln -s src/main.rs "$M/projects/apollo/entry"
ln "$M/projects/apollo/src/main.rs" "$M/projects/apollo/main-hardlink.rs"
echo "secret" > "$M/projects/apollo/.env" && chmod 600 "$M/projects/apollo/.env"

if [ -n "$SSHD" ]; then
    echo "== georep create gv0 $SLAVE push-pem (session key, pinned host key, forced command)"
    "$GEOREP" create gv0 "$SLAVE" push-pem name gv0-dr1 --identity "$DEMO/ssh/operator" --remote-georep "$GEOREP"
    grep georep: "$DEMO/ssh/authorized_keys"
else
    FP=$(grep -o 'SHA256:[^ ]*' "$DEMO/ssh/serve.out" | head -1)
    echo "== georep create gv0 $SLAVE no-verify --host-key $FP (keys managed by hand for serve)"
    "$GEOREP" create gv0 "$SLAVE" no-verify name gv0-dr1 --host-key "$FP" --remote-georep "$GEOREP" \
        | tee /dev/stderr | grep '^command=' >> "$DEMO/ssh/authorized_keys"
fi

echo "== first sync over SSH (hybrid crawl against an empty index)"
"$GEOREP" sync gv0 "$SLAVE"

echo "== georep start gv0-dr1 (the session by its name; a monitor in the background)"
echo "   then change the master while it runs"
"$GEOREP" start gv0-dr1
sleep 1
echo 'fn main() { println!("hello, DR"); }' > "$M/projects/apollo/src/main.rs"
mv "$M/photos/2026" "$M/photos/archive-2026"
rm "$M/photos/archive-2026/img7.jpg"
chmod 640 "$M/projects/apollo/dataset.bin"
echo "written at $(date +%T)" > "$M/projects/apollo/live.txt"
for _ in $(seq 200); do
    diff -r --no-dereference -x .georep "$M" "$S" >/dev/null 2>&1 && break
    sleep 0.05
done
if diff -r --no-dereference -x .georep "$M" "$S" >/dev/null; then
    echo "RESULT: DR copy $S equals master $M"
else
    echo "RESULT: DR copy differs from the master" >&2
    exit 1
fi
echo "== checkpoint: complete once everything written so far is on the DR site"
"$GEOREP" config gv0 "$SLAVE" checkpoint now
for _ in $(seq 100); do
    "$GEOREP" status gv0 "$SLAVE" --json | grep -q '"checkpoint_completed": "Yes"' && break
    sleep 0.1
done
"$GEOREP" status gv0 "$SLAVE" --check
sleep 1.2   # let a marker advance LAST_SYNCED past the last change
echo
"$GEOREP" status gv0 "$SLAVE" detail
echo
"$GEOREP" status

echo
echo "== what happened"
cleanup
trap - EXIT
cat <<DONE
The session gv0-dr1 (gv0 -> $SLAVE) replicated a sample tree over SSH, then the changes made
while it ran; it is now stopped and deleted, and the DR site's server is stopped.
  master brick:  $M
  DR copy:       $S
  logs:          $GEOREP_HOME/log/gv0-dr1/
Next, with GEOREP_HOME=$GEOREP_HOME:
  $GEOREP sync $M /tmp/my-copy       one pass into a new local copy
  $GEOREP verify $M /tmp/my-copy     compare without copying
  $GEOREP create --help              sessions, push-pem and names; see docs/runbook.md
Remove everything with: rm -rf $DEMO
DONE
