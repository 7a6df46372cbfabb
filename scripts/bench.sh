#!/usr/bin/env bash
# Benchmarks georep against the physical limits measured in the same run on the same disk.
# Usage: scripts/bench.sh [small|big|all]   (BENCH_DIR=/path to choose where data goes)
# Prints a table: median wall time of RUNS runs, ratio to cp -a, peak memory of both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
RUNS=${RUNS:-3}
cargo build --release --locked -q
BIN=$PWD/target/release/georep
BASE=${BENCH_DIR:-/tmp}/georep-bench-$$
mkdir -p "$BASE"
trap 'rm -rf "$BASE"' EXIT

now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rows=()
row() { rows+=("$(printf '%-44s %9s ms %8s %14s %14s' "$1" "$2" "$3" "$4" "$5")"); }

# Times `georep sync --once` of $1 into fresh slaves; sets g_ms, g_mrss, g_arss, g_noop_ms.
time_georep() {
    local src=$1; shift
    local t=() noop=() m=0 a=0
    for i in $(seq "$RUNS"); do
        local dst=$BASE/g-$RANDOM-$i home=$BASE/home-$RANDOM-$i
        mkdir -p "$dst"
        local t0; t0=$(now)
        GEOREP_HOME=$home "$BIN" sync "$src" "$dst" --once --json "$@" > "$BASE/out.json"
        local t1; t1=$(now)
        t+=("$(ms "$t0" "$t1")")
        m=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["master_peak_rss_kb"])' "$BASE/out.json")
        a=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["agent_peak_rss_kb"])' "$BASE/out.json")
        t0=$(now)
        GEOREP_HOME=$home "$BIN" sync "$src" "$dst" --once --json "$@" > "$BASE/out2.json"
        t1=$(now)
        noop+=("$(ms "$t0" "$t1")")
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["files_sent"]==0, r' "$BASE/out2.json"
    done
    g_ms=$(printf '%s\n' "${t[@]}" | median)
    g_noop_ms=$(printf '%s\n' "${noop[@]}" | median)
    g_mrss=$m; g_arss=$a
}

# Times `cp -a $1` into fresh directories (optionally followed by sync); sets c_ms.
time_cp() {
    local src=$1 dosync=${2:-}
    local t=()
    for i in $(seq "$RUNS"); do
        local dst=$BASE/c-$RANDOM-$i
        local t0; t0=$(now)
        cp -a "$src" "$dst"
        [ -n "$dosync" ] && sync -f "$dst"
        local t1; t1=$(now)
        t+=("$(ms "$t0" "$t1")")
    done
    c_ms=$(printf '%s\n' "${t[@]}" | median)
}

ratio() { python3 -c "print(f'{$1/max($2,1):.2f}x')"; }

if [ "$what" = small ] || [ "$what" = all ]; then
    src=$BASE/small
    python3 - "$src" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(100):
    os.makedirs(f"{root}/d{d:02}", exist_ok=True)
    for f in range(100):
        with open(f"{root}/d{d:02}/f{f:03}", "wb") as fh:
            fh.write(os.urandom(4096))
PY
    cat "$src"/*/* > /dev/null   # warm the cache once, untimed
    time_cp "$src"; cp_small=$c_ms
    time_cp "$src" sync; cps_small=$c_ms
    row "cp -a, 10,000 x 4 KiB" "$cp_small" "1.00x" "-" "-"
    row "cp -a + sync, 10,000 x 4 KiB" "$cps_small" "$(ratio "$cps_small" "$cp_small")" "-" "-"
    time_georep "$src"
    row "georep sync --once, 10,000 x 4 KiB" "$g_ms" "$(ratio "$g_ms" "$cp_small")" "${g_mrss} KiB" "${g_arss} KiB"
    row "georep sync --once, nothing changed" "$g_noop_ms" "$(ratio "$g_noop_ms" "$cp_small")" "-" "-"
    time_georep "$src" --compression 0
    row "georep --compression 0, 10,000 x 4 KiB" "$g_ms" "$(ratio "$g_ms" "$cp_small")" "${g_mrss} KiB" "${g_arss} KiB"
    if command -v rsync >/dev/null; then
        t0=$(now); rsync -a "$src/" "$BASE/rs-small/"; t1=$(now)
        row "rsync -a (local), 10,000 x 4 KiB" "$(ms "$t0" "$t1")" "$(ratio "$(ms "$t0" "$t1")" "$cp_small")" "-" "-"
    fi
fi

if [ "$what" = big ] || [ "$what" = all ]; then
    src=$BASE/big
    mkdir -p "$src"
    head -c 1G /dev/urandom > "$src/random.bin"
    cat "$src/random.bin" > /dev/null
    time_cp "$src"; cp_big=$c_ms
    time_cp "$src" sync; cps_big=$c_ms
    row "cp -a, 1 GiB random" "$cp_big" "1.00x" "-" "-"
    row "cp -a + sync, 1 GiB random" "$cps_big" "$(ratio "$cps_big" "$cp_big")" "-" "-"
    time_georep "$src"
    row "georep sync --once, 1 GiB random" "$g_ms" "$(ratio "$g_ms" "$cp_big")" "${g_mrss} KiB" "${g_arss} KiB"
    time_georep "$src" --compression 0
    row "georep --compression 0, 1 GiB random" "$g_ms" "$(ratio "$g_ms" "$cp_big")" "${g_mrss} KiB" "${g_arss} KiB"
fi

echo
echo "georep benchmark $(date -u +%F) on $(nproc) cores, $(uname -r), runs=$RUNS (median)"
printf '%-44s %12s %8s %14s %14s\n' "case" "wall" "vs cp -a" "master RSS" "agent RSS"
printf '%s\n' "${rows[@]}"
