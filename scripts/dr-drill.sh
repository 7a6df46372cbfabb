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

step "DR site: volume gv0-dr, private sshd on 127.0.0.1:$PORT"
mkdir -p "$S" "$M"
dr volume create gv0-dr "$S"
start_private_sshd "$D/ssh" "$PORT" "$DR_HOME"

step "master site: volume gv0, session with push-pem, replicating"
"$BIN" volume create gv0 "$M"
mkdir -p "$M/app" "$M/data"
for i in $(seq 1 200); do echo "record $i" > "$M/data/r$i.txt"; done
for f in both master-only del-on-dr del-on-master; do echo "v1 shipped" > "$M/app/$f.txt"; done
"$BIN" create gv0 "$SLAVE" push-pem --identity "$OPERATOR_KEY" --remote-georep "$BIN"
"$BIN" start gv0 "$SLAVE"
wait_for 60 "$BIN" verify gv0 "$SLAVE" || fail "the first sync did not complete"
"$BIN" config gv0 "$SLAVE" checkpoint now
wait_for 60 bash -c "\"$BIN\" status gv0 \"$SLAVE\" --json | grep -q '\"checkpoint_completed\": \"Yes\"'" \
    || fail "the checkpoint did not complete"
sleep 1.5   # the DR site learns LAST_SYNCED within a second
"$BIN" status gv0 "$SLAVE" detail

step "unshipped writes on the master (session paused), then the master site dies"
"$BIN" pause gv0 "$SLAVE"
echo "master v2, never shipped" > "$M/app/both.txt"
echo "master v2, never shipped" > "$M/app/master-only.txt"
echo "master v2, never shipped" > "$M/app/del-on-dr.txt"
rm "$M/app/del-on-master.txt"
sleep 0.3
SESS=$(ls "$GEOREP_HOME/state/sessions")
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
DR_SNAPSHOT=$(cd "$S" && find . -path ./.georep -prune -o -print0 | sort -z | xargs -0 stat -c '%n %s %Y' | md5sum)

step "the old master comes back: fenced (Faulty), writes nothing to the DR site"
"$BIN" start gv0 "$SLAVE"
echo "written after the master came back" > "$M/after-restart.txt"
wait_for 30 bash -c "\"$BIN\" status gv0 \"$SLAVE\" --json | grep -q '\"status\": \"Faulty\"'" || fail "the fenced master is not Faulty"
"$BIN" status gv0 "$SLAVE" detail
set +e; "$BIN" status gv0 "$SLAVE" --check; code=$?; set -e
[ "$code" = 2 ] || fail "status --check should be CRITICAL (2) for a fenced master, got $code"
sleep 2
NOW=$(cd "$S" && find . -path ./.georep -prune -o -print0 | sort -z | xargs -0 stat -c '%n %s %Y' | md5sum)
[ "$DR_SNAPSHOT" = "$NOW" ] || fail "the fenced master changed the DR volume"
"$BIN" stop gv0 "$SLAVE"

step "georep resync --reverse --dry-run (lists, changes nothing)"
"$BIN" resync --reverse gv0 "$SLAVE" --dry-run | tee "$D/dry.out"
grep -q "conflict  app/both.txt" "$D/dry.out" || fail "dry run does not list the both-sides conflict"
grep -q "master v2" "$M/app/both.txt" || fail "dry run changed the master"

step "georep failback (demote DR, final reverse pass, replication restarts)"
"$BIN" failback gv0 "$SLAVE" | tee "$D/failback.out"
wait_for 60 "$BIN" verify gv0 "$SLAVE" --checksum || { "$BIN" verify gv0 "$SLAVE"; fail "master and DR differ after failback"; }
"$BIN" verify gv0 "$SLAVE" --checksum

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
wait_for 30 test -f "$S/live.txt" || fail "new write not replicated after failback"
"$BIN" status gv0 "$SLAVE" --check
"$BIN" status gv0 "$SLAVE"
echo
echo "DRILL PASSED"
