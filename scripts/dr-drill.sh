#!/usr/bin/env bash
# The disaster-recovery drill of docs/runbook.md, run for real on this host over SSH (a private
# OpenSSH sshd on a loopback port plays the DR site) and checked at every step:
#   replicate -> unshipped master writes -> master site dies -> failover (RPO printed) ->
#   writes at the DR site -> old master comes back fenced -> resync --reverse --dry-run ->
#   failback -> forward replication again -> verify --checksum, every version kept.
# Exits non-zero at the first step that does not hold. Everything lives under $DRILL_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/private-sshd.sh
BIN=${GEOREP_BIN:-}
if [ -z "$BIN" ]; then
    cargo build --locked -q
    BIN=$PWD/target/debug/georep
fi
D=${DRILL_DIR:-/tmp/georep-drill}
pkill -f "$D/" 2>/dev/null || true
rm -rf "$D"
mkdir -p "$D"
export GEOREP_HOME=$D/master-home GEOREP_NODE=site-a
DR_HOME=$D/dr-home
M=$D/site-a/gv0 S=$D/site-b/gv0-dr
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SLAVE="$(id -un)@127.0.0.1:$PORT::gv0-dr"
fail() { echo "DRILL FAILED: $*" >&2; exit 1; }
step() { echo; echo "== $*"; }
dr() { GEOREP_HOME=$DR_HOME GEOREP_NODE=dr1 "$BIN" "$@"; }
cleanup() {
    "$BIN" stop gv0 "$SLAVE" force >/dev/null 2>&1 || true
    [ -n "${SSHD_PID:-}" ] && kill "$SSHD_PID" 2>/dev/null || true
    pkill -f "journal --session .*$D/" 2>/dev/null || true
}
trap cleanup EXIT
wait_for() { # wait_for SECONDS CMD...
    local t=$1; shift
    for _ in $(seq $((t * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}
# The drill's own oracle, independent of georep: every entry beneath DIR but .georep, with its
# kind, mode, owner, mtime in ns, size, content hash, link target, device number and hard-link
# group (the first name sharing its inode). An entry it cannot read fails the drill.
snapshot() {
    python3 - "$1" <<'PY'
import hashlib, os, stat, sys
root = sys.argv[1]
rows, groups = [], {}
for dirpath, dirs, files in os.walk(root):
    rel = os.path.relpath(dirpath, root)
    if rel == ".":
        dirs[:] = [d for d in dirs if d != ".georep"]
    for name in sorted(dirs) + sorted(files):
        p = os.path.join(dirpath, name)
        st = os.lstat(p)
        r = os.path.relpath(p, root)
        h = target = ""
        if stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                h = hashlib.sha256(f.read()).hexdigest()
            if st.st_nlink > 1:
                groups.setdefault(st.st_ino, []).append(r)
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(p)
        rows.append([r, stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                     st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else 0, st.st_size if stat.S_ISREG(st.st_mode) else 0,
                     h, target, st.st_rdev, st.st_ino])
leader = {ino: min(names) for ino, names in groups.items()}
for row in sorted(rows):
    ino = row.pop()
    print(*row, leader.get(ino, ""), sep="\t")
PY
}

step "DR site: volume gv0-dr, private sshd on 127.0.0.1:$PORT"
mkdir -p "$S" "$M"
dr volume create gv0-dr "$S"
start_private_sshd "$D/ssh" "$PORT" "$DR_HOME"

step "master site: volume gv0, session with push-pem, replicating"
"$BIN" volume create gv0 "$M"
mkdir -p "$M/app" "$M/data" "$M/empty" "$M/deep/a/b/c"
for i in $(seq 1 200); do echo "record $i" > "$M/data/r$i.txt"; done
for f in both master-only del-on-dr del-on-master; do echo "v1 shipped" > "$M/app/$f.txt"; done
# A varied tree: symlinks (dangling too), hard links, modes, a FIFO, a large sparse-free file,
# an old mtime, names with spaces and non-UTF-8 bytes, and a device node when root.
ln -s ../data/r1.txt "$M/app/link-to-r1"
ln -s nowhere "$M/app/dangling"
ln "$M/data/r2.txt" "$M/deep/a/b/c/hard-r2"
chmod 0640 "$M/data/r3.txt"; chmod 0755 "$M/data/r4.txt"; chmod 0700 "$M/deep/a"
mkfifo "$M/app/fifo"
head -c $((3 << 20)) /dev/urandom > "$M/data/blob.bin"
touch -d '2001-02-03 04:05:06.123456789' "$M/data/r5.txt"
echo "spaced" > "$M/app/with space.txt"
echo "latin1" > "$M/app/$(printf 'caf\xe9')"
if [ "$(id -u)" = 0 ]; then mknod "$M/app/null-dev" c 1 3; chown 1234:5678 "$M/data/r6.txt"; fi
"$BIN" create gv0 "$SLAVE" push-pem --identity "$OPERATOR_KEY" --remote-georep "$BIN"
"$BIN" start gv0 "$SLAVE"
same_trees() { [ "$(snapshot "$M")" = "$(snapshot "$S")" ]; }
wait_for 60 same_trees || { diff <(snapshot "$M") <(snapshot "$S") | head -20; fail "the first sync did not complete"; }
"$BIN" verify gv0 "$SLAVE" || fail "verify disagrees with the drill's own comparison"
CHECKPOINT_NS=$(date +%s%N)
"$BIN" config gv0 "$SLAVE" checkpoint now
wait_for 60 bash -c "\"$BIN\" status gv0 \"$SLAVE\" --json | grep -q '\"checkpoint_completed\": \"Yes\"'" \
    || fail "the checkpoint did not complete"
# The DR site learns LAST_SYNCED from the master's beacons (about one a second).
dr_knows_checkpoint() {
    python3 - "$S/.georep/agent.db" "$CHECKPOINT_NS" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
v = db.execute("SELECT max(CAST(value AS INTEGER)) FROM meta WHERE key LIKE 'stime:%'").fetchone()[0]
sys.exit(0 if v is not None and v >= int(sys.argv[2]) else 1)
PY
}
wait_for 30 dr_knows_checkpoint || fail "the DR site never learned a LAST_SYNCED past the checkpoint"
"$BIN" status gv0 "$SLAVE" detail

step "unshipped writes on the master (session paused), then the master site dies"
"$BIN" pause gv0 "$SLAVE"
echo "master v2, never shipped" > "$M/app/both.txt"
echo "master v2, never shipped" > "$M/app/master-only.txt"
echo "master v2, never shipped" > "$M/app/del-on-dr.txt"
rm "$M/app/del-on-master.txt"
SESS=$(ls "$GEOREP_HOME/state/sessions")
# The master site dies once its journal holds those writes (the paused worker keeps them).
journaled() {
    python3 - "$GEOREP_HOME"/state/sessions/"$SESS"/bricks/*/journal.db <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
n = db.execute("SELECT count(*) FROM records WHERE path = CAST('app/del-on-master.txt' AS BLOB)").fetchone()[0]
sys.exit(0 if n else 1)
PY
}
wait_for 30 journaled || fail "the master's journal never recorded the unshipped writes"
kill -9 "$(cat "$GEOREP_HOME/state/sessions/$SESS/monitor.pid")"
for p in "$GEOREP_HOME"/state/sessions/"$SESS"/bricks/*/writer.pid; do kill -9 "$(cat "$p")"; done

step "DR site: georep failover gv0-dr (unplanned) — read the RPO"
dr failover gv0-dr | tee "$D/failover.out"
grep -q PRIMARY "$D/failover.out" || fail "failover did not promote the volume"
grep -q "site-a:$M  LAST_SYNCED" "$D/failover.out" || fail "failover printed no RPO for the brick"

step "the business runs at the DR site"
echo "DR v3 written during the disaster" > "$S/app/both.txt"
rm "$S/app/del-on-dr.txt"
echo "DR v3 written during the disaster" > "$S/app/del-on-master.txt"
mkdir -p "$S/dr-new" && echo "made at the DR site" > "$S/dr-new/orders.csv"
DR_SNAPSHOT=$(snapshot "$S")

step "the old master comes back: fenced (Faulty), writes nothing to the DR site"
"$BIN" start gv0 "$SLAVE"
echo "written after the master came back" > "$M/after-restart.txt"
wait_for 30 bash -c "\"$BIN\" status gv0 \"$SLAVE\" --json | grep -q '\"status\": \"Faulty\"'" || fail "the fenced master is not Faulty"
"$BIN" status gv0 "$SLAVE" detail
set +e; "$BIN" status gv0 "$SLAVE" --check; code=$?; set -e
[ "$code" = 2 ] || fail "status --check should be CRITICAL (2) for a fenced master, got $code"
# Refused twice (the monitor restarts a Faulty worker): the DR volume is still as it was.
refusals() { cat "$GEOREP_HOME"/log/*/worker-*.log 2>/dev/null | grep -c "failover" || true; }
wait_for 60 bash -c "[ \$(cat \"$GEOREP_HOME\"/log/*/worker-*.log 2>/dev/null | grep -c failover) -ge 2 ]" \
    || fail "the fenced master was refused only $(refusals) time(s)"
[ "$DR_SNAPSHOT" = "$(snapshot "$S")" ] || { diff <(echo "$DR_SNAPSHOT") <(snapshot "$S"); fail "the fenced master changed the DR volume"; }
"$BIN" stop gv0 "$SLAVE"

step "georep resync --reverse --dry-run (lists, changes nothing)"
"$BIN" resync --reverse gv0 "$SLAVE" --dry-run | tee "$D/dry.out"
grep -q "conflict  app/both.txt" "$D/dry.out" || fail "dry run does not list the both-sides conflict"
grep -q "master v2" "$M/app/both.txt" || fail "dry run changed the master"

step "georep failback (demote DR, final reverse pass, replication restarts)"
"$BIN" failback gv0 "$SLAVE" | tee "$D/failback.out"
wait_for 60 same_trees || { diff <(snapshot "$M") <(snapshot "$S") | head -20; fail "master and DR differ after failback"; }
"$BIN" verify gv0 "$SLAVE" --checksum || fail "verify disagrees with the drill's own comparison"

step "every version exists"
grep -q "DR v3" "$M/app/both.txt" || fail "DR version of both.txt not in place"
grep -q "master v2" "$M"/app/both.txt.georep-conflict-* || fail "master version of both.txt not kept"
grep -q "master v2" "$M"/app/del-on-dr.txt.georep-conflict-* || fail "master version of del-on-dr.txt not kept"
grep -q "DR v3" "$M/app/del-on-master.txt" || fail "DR version of del-on-master.txt lost"
grep -q "master v2" "$M/app/master-only.txt" || fail "unshipped master write lost"
grep -q "made at the DR site" "$M/dr-new/orders.csv" || fail "DR-created file lost"
grep -q "after the master came back" "$S/after-restart.txt" || fail "post-restart master write not replicated"

step "forward replication is live again"
echo "after failback" > "$M/live.txt"
wait_for 30 same_trees || fail "new write not replicated after failback"
"$BIN" status gv0 "$SLAVE" --check
"$BIN" status gv0 "$SLAVE"
echo
echo "DRILL PASSED"
