#!/usr/bin/env bash
# A real replication on this host: builds georep, makes a sample master tree, replicates it to a
# DR directory, changes the master (edit, rename a directory, delete, chmod), replicates again and
# shows that the DR copy equals the master. Everything lives under $DEMO_DIR (default /tmp/georep-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo: cargo is required (install Rust with rustup)" >&2; exit 1; }
command -v cc >/dev/null || { apt-get update -qq && apt-get install -y -qq gcc; }

echo "== building georep (release)"
cargo build --release --locked -q
GEOREP=$PWD/target/release/georep
DEMO=${DEMO_DIR:-/tmp/georep-demo}
rm -rf "$DEMO"
mkdir -p "$DEMO"
export GEOREP_HOME=$DEMO/home GEOREP_NODE=${GEOREP_NODE:-$(hostname)}
M=$DEMO/site-a/brick1 S=$DEMO/site-b/dr1

echo "== volumes: master gv0 on $M, DR volume gv0-dr on $S"
"$GEOREP" volume create gv0 "$M"
"$GEOREP" volume create gv0-dr "$S"
"$GEOREP" volume info gv0

echo "== a sample tree on the master"
mkdir -p "$M/projects/apollo/src" "$M/photos/2026" "$M/empty"
for i in $(seq 1 500); do echo "photo $i" > "$M/photos/2026/img$i.jpg"; done
printf 'fn main() { println!("hello"); }\n' > "$M/projects/apollo/src/main.rs"
head -c 50M /dev/urandom > "$M/projects/apollo/dataset.bin"
ln -s src/main.rs "$M/projects/apollo/entry"
ln "$M/projects/apollo/src/main.rs" "$M/projects/apollo/main-hardlink.rs"
echo "secret" > "$M/projects/apollo/.env" && chmod 600 "$M/projects/apollo/.env"

echo "== first sync (hybrid crawl against an empty index)"
"$GEOREP" sync gv0 gv0-dr --once

echo "== change the master: edit, rename a 500-file directory, delete, chmod"
echo 'fn main() { println!("hello, DR"); }' > "$M/projects/apollo/src/main.rs"
mv "$M/photos/2026" "$M/photos/archive-2026"
rm "$M/photos/archive-2026/img7.jpg"
chmod 640 "$M/projects/apollo/dataset.bin"

echo "== second sync: only the changes travel (the directory is renamed, not re-sent)"
"$GEOREP" sync gv0 gv0-dr --once --json | tee "$DEMO/second.json"

echo "== third sync: nothing changed, nothing sent"
"$GEOREP" sync gv0 gv0-dr --once

echo "== continuous replication: a session with a journal writer, then a live change"
"$GEOREP" create gv0 gv0-dr
"$GEOREP" start gv0 gv0-dr --foreground 2> "$DEMO/start.log" &
START=$!
trap 'kill -INT $START 2>/dev/null; wait $START 2>/dev/null; "$GEOREP" delete gv0 gv0-dr >/dev/null 2>&1 || true' EXIT
sleep 1
echo "written at $(date +%T.%N | cut -c1-12)" > "$M/projects/apollo/live.txt"
t0=$(date +%s%N)
until [ "$(cat "$S/projects/apollo/live.txt" 2>/dev/null)" = "$(cat "$M/projects/apollo/live.txt")" ]; do
    sleep 0.001
    [ $(( ($(date +%s%N) - t0) / 1000000000 )) -lt 10 ] || { echo "live change did not arrive" >&2; exit 1; }
done
echo "live change visible on the DR site after $(( ($(date +%s%N) - t0) / 1000000 )) ms (polled from a shell)"
cat "$(ls "$GEOREP_HOME"/state/sessions/*/bricks/*/status.json)"
echo
kill -INT $START; wait $START || true
"$GEOREP" delete gv0 gv0-dr
trap - EXIT

echo "== the DR copy"
ls -la "$S/projects/apollo" "$S/photos"
if diff -r --no-dereference "$M" "$S" -x .georep >/dev/null; then
    echo "RESULT: DR copy $S equals master $M"
else
    echo "RESULT: DR copy differs from the master" >&2
    exit 1
fi
