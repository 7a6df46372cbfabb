#!/usr/bin/env bash
# Benchmarks georep against the physical limits measured in the same run on the same disk.
# Usage: scripts/bench.sh [small|big|latency|scrub|intake|sparse|ssh|ssh-big|ssh-small|ssh-append|ssh-delta|wan|wan-channels|all|scale|gluster]
#        (scale is not part of all: 10^6 files, minutes and about 10 GB of disk; put BENCH_DIR
#        on a freshly made filesystem: ext4 without a journal slows creation after mass deletes)
#        (gluster is not part of all either: a private glusterd on 127.0.0.1:24007, a distributed
#        master volume and a DR volume, 10,000 x 4 KiB written through the mount; GLUSTER_GEOREP=1
#        also runs Gluster's own geo-replication in the same run, scripts/gluster-georep.sh)
#        (BENCH_DIR=/path to choose where data goes; SSH_SYNC_ARGS="--channels 1" adds words to
#        every sync over ssh; wan-channels: CHANNELS_LIST="1 2 4 8", the channels default)
# Prints a table: median wall time of RUNS runs, ratio to cp -a, peak memory of both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
RUNS=${RUNS:-3}
# GEOREP_BIN=/path/to/georep compares another build (say, the previous commit's) in the same way.
if [ -z "${GEOREP_BIN:-}" ]; then
    cargo build --release --locked -q
fi
BIN=${GEOREP_BIN:-$PWD/target/release/georep}
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

# 10,000 files of 4 KiB of random data in 100 directories.
make_small_tree() {
    python3 - "$1" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(100):
    os.makedirs(f"{root}/d{d:02}", exist_ok=True)
    for f in range(100):
        with open(f"{root}/d{d:02}/f{f:03}", "wb") as fh:
            fh.write(os.urandom(4096))
PY
}

if [ "$what" = small ] || [ "$what" = all ]; then
    src=$BASE/small
    make_small_tree "$src"
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

# Write-close on the master -> new content readable on the slave, 200 times: "p50 p99 max n"
# into $3. $4: the directory under the master to write in (default lat).
measure_latency() {
    python3 - "$1" "$2" "$3" "${4:-lat}" <<'PY'
import os, sys, time
m, s, out, d = sys.argv[1:5]
os.makedirs(f"{m}/{d}", exist_ok=True)
deadline = time.time() + 60
while not os.path.isdir(f"{s}/{d}") and time.time() < deadline:
    time.sleep(0.01)
time.sleep(0.5)
lat = []
for i in range(200):
    name = f"{d}/f{i % 20}"
    data = f"change {i}\n".encode()
    with open(f"{m}/{name}", "wb") as f:
        f.write(data)
    t0 = time.perf_counter()
    while True:
        try:
            with open(f"{s}/{name}", "rb") as f:
                if f.read() == data:
                    break
        except FileNotFoundError:
            pass
        if time.perf_counter() - t0 > 10:
            raise SystemExit(f"change {i} did not arrive within 10 s")
        time.sleep(0.0002)
    lat.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.02)
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
open(out, "w").write(f"{p(0.5):.1f} {p(0.99):.1f} {lat[-1]:.1f} {len(lat)}\n")
PY

}

# Continuous replication: write-close on the master -> new content readable on the slave.
# Sparse files: a 1 GiB image with nothing allocated and one with 4 MiB of data in the middle.
# georep against cp -a --sparse=always (which also looks for holes), with what each allocates.
if [ "$what" = sparse ] || [ "$what" = all ]; then
    sp=$BASE/sparse-src; mkdir -p "$sp"
    truncate -s 1G "$sp/empty.img"
    truncate -s 1G "$sp/vm.img"
    head -c 4M /dev/urandom | dd of="$sp/vm.img" bs=1M seek=500 conv=notrunc status=none
    sync
    alloc() { du -sB1 "$1" | cut -f1; }
    cs=() gs=()
    for i in $(seq "$RUNS"); do
        d=$BASE/sparse-cp-$i; t0=$(now); cp -a --sparse=always "$sp" "$d"; sync -f "$d"; cs+=("$(ms "$t0" "$(now)")")
        d=$BASE/sparse-g-$i; mkdir -p "$d"; t0=$(now)
        GEOREP_HOME=$BASE/sparse-home-$i "$BIN" sync "$sp" "$d" --once --json > "$BASE/sparse.json"
        gs+=("$(ms "$t0" "$(now)")")
        cmp "$sp/vm.img" "$d/vm.img" || { echo "the sparse copy differs" >&2; exit 1; }
    done
    c_ms=$(printf '%s\n' "${cs[@]}" | median); g_ms=$(printf '%s\n' "${gs[@]}" | median)
    row "cp -a --sparse=always, 2 x 1 GiB sparse" "$c_ms" "1.00x" "alloc $(alloc "$BASE/sparse-cp-1") B" "-"
    row "georep, 2 x 1 GiB sparse (4 MiB data)" "$g_ms" "$(ratio "$g_ms" "$c_ms")" "alloc $(alloc "$BASE/sparse-g-1") B" "-"
fi

if [ "$what" = latency ] || [ "$what" = all ]; then
    m=$BASE/lat-m s=$BASE/lat-s home=$BASE/lat-home
    mkdir -p "$m" "$s"
    GEOREP_HOME=$home "$BIN" create "$m" "$s" >/dev/null
    GEOREP_HOME=$home "$BIN" start "$m" "$s" --foreground 2>"$BASE/lat.log" &
    spid=$!   # the monitor in the foreground: killing it stops its worker too
    measure_latency "$m" "$s" "$BASE/lat.txt"
    kill -INT $spid; wait $spid || true
    GEOREP_HOME=$home "$BIN" delete "$m" "$s" >/dev/null
    read -r p50 p99 pmax n < "$BASE/lat.txt"
    row "latency p50 over $n single-file changes" "$p50" "-" "-" "-"
    row "latency p99 over $n single-file changes" "$p99" "-" "-" "-"
    row "latency max over $n single-file changes" "$pmax" "-" "-" "-"
fi

# The scrub (issue 19): live latency on a 100,000-file tree, idle and while scrub passes run
# back to back (scrub-interval 1s), side by side in the same run.
if [ "$what" = scrub ] || [ "$what" = all ]; then
    m=$BASE/scrub-m s=$BASE/scrub-s home=$BASE/scrub-home
    mkdir -p "$m" "$s"
    python3 - "$m" <<'PY'
import os, sys
m = sys.argv[1]
for d in range(1000):
    os.makedirs(f"{m}/t/d{d:04}", exist_ok=True)
    for f in range(100):
        with open(f"{m}/t/d{d:04}/f{f:03}", "wb") as fh:
            fh.write(b"x" * 64)
PY
    GEOREP_HOME=$home "$BIN" create "$m" "$s" >/dev/null
    GEOREP_HOME=$home "$BIN" config "$m" "$s" scrub-interval 0 >/dev/null
    GEOREP_HOME=$home "$BIN" start "$m" "$s" --foreground 2>"$BASE/scrub.log" &
    spid=$!
    measure_latency "$m" "$s" "$BASE/scrub-idle.txt" idle
    GEOREP_HOME=$home "$BIN" config "$m" "$s" scrub-interval 1s >/dev/null
    # Wait for the first pass to start, then measure while passes follow each other.
    for _ in $(seq 300); do
        GEOREP_HOME=$home "$BIN" status "$m" "$s" --json | grep -q '"scrub_running": true' && break
        sleep 0.1
    done
    measure_latency "$m" "$s" "$BASE/scrub-busy.txt" busy
    passes=$(GEOREP_HOME=$home "$BIN" status "$m" "$s" --json | python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; print((r.get("scrub") or {}).get("pass", 0), (r.get("scrub") or {}).get("finished_ns", 0) - (r.get("scrub") or {}).get("started_ns", 0))')
    kill -INT $spid; wait $spid || true
    GEOREP_HOME=$home "$BIN" delete "$m" "$s" >/dev/null
    read -r i50 i99 imax n < "$BASE/scrub-idle.txt"
    read -r b50 b99 bmax n < "$BASE/scrub-busy.txt"
    read -r npass pass_ns <<< "$passes"
    row "latency p50, 100k-file tree, idle" "$i50" "-" "-" "-"
    row "latency p50, same, scrub passes running" "$b50" "$(ratio "$b50" "$i50")" "-" "-"
    row "latency p99, idle / scrubbing" "$i99 / $b99" "-" "-" "-"
    row "scrub passes done; last pass (ms)" "$npass" "$((pass_ns / 1000000)) ms" "-" "-"
fi

# Journal intake: files created as fast as one process can, all recorded without a gap.
if [ "$what" = intake ] || [ "$what" = all ]; then
    m=$BASE/in-m s=$BASE/in-s home=$BASE/in-home
    mkdir -p "$m" "$s"
    GEOREP_HOME=$home "$BIN" create "$m" "$s" >/dev/null
    journal=$(ls "$home"/state/sessions/*/bricks/*/journal.db)
    python3 - "$m" "$journal" "$BASE/intake.txt" "${INTAKE_PROCS:-4}" <<'PY'
import os, sqlite3, sys, time
from multiprocessing import Process
m, journal, out, procs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
N = 100_000
per = N // procs
db = sqlite3.connect(journal, timeout=30)
start_seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
for p in range(procs):
    os.makedirs(f"{m}/in{p}")
time.sleep(0.3)
def make(p):
    for i in range(per):
        os.close(os.open(f"{m}/in{p}/f{i:06}", os.O_CREAT | os.O_WRONLY, 0o644))
workers = [Process(target=make, args=(p,)) for p in range(procs)]
t0 = time.perf_counter()
for w in workers:
    w.start()
for w in workers:
    w.join()
N = per * procs
t_made = time.perf_counter()
while True:
    n = db.execute("SELECT COUNT(*) FROM records WHERE seq > ? AND op = 1", (start_seq,)).fetchone()[0]
    if n >= N or time.perf_counter() - t0 > 120:
        break
    time.sleep(0.005)
t_rec = time.perf_counter()
gaps = db.execute("SELECT COUNT(*) FROM records WHERE seq > ? AND op = 10", (start_seq,)).fetchone()[0]
open(out, "w").write(f"{N/(t_made-t0):.0f} {n/(t_rec-t0):.0f} {n} {gaps}\n")
PY
    GEOREP_HOME=$home "$BIN" delete "$m" "$s" >/dev/null
    read -r made recorded n gaps < "$BASE/intake.txt"
    row "intake: creates/s made (${INTAKE_PROCS:-4} processes)" "-" "$made/s" "-" "-"
    row "intake: creates/s recorded ($n, $gaps gaps)" "-" "$recorded/s" "-" "-"
fi

# Over SSH (a private OpenSSH sshd on loopback): georep vs the cipher's limit and rsync -a.
case $what in ssh|ssh-big|ssh-small|ssh-append|ssh-delta|wan|wan-channels|all) ssh_bench=1 ;; *) ssh_bench= ;; esac
if [ -n "$ssh_bench" ]; then
    command -v rsync >/dev/null || { apt-get install -y -qq rsync >/dev/null 2>&1 || true; }
    # shellcheck source=scripts/private-sshd.sh
    . scripts/private-sshd.sh
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    start_private_sshd "$BASE/sshd" "$port" "$BASE/dr-home"
    trap 'kill $SSHD_PID 2>/dev/null; rm -rf "$BASE"' EXIT
    user=$(id -un)
    link="over ssh"
    if [ "$what" = wan ] || [ "$what" = wan-channels ]; then
        # A long link: every byte of the SSH path 57 ms late each way (WAN_DELAY_MS), through
        # georep's own delay proxy (no netem in this kernel); everything below goes through it.
        sshd_port=$port
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        "$BIN" delay-proxy --listen "127.0.0.1:$port" --connect "127.0.0.1:$sshd_port" \
            --delay-ms "${WAN_DELAY_MS:-57}" 2>/dev/null &
        PROXY_PID=$!
        trap 'kill $SSHD_PID $PROXY_PID 2>/dev/null; rm -rf "$BASE"' EXIT
        SSH_OPTS=("${SSH_OPTS[@]/#$sshd_port/$port}")
        sleep 0.5
        t0=$(now); ssh "${SSH_OPTS[@]}" "$user@127.0.0.1" true; t1=$(now)
        link="at $(( 2 * ${WAN_DELAY_MS:-57} )) ms RTT"
        row "ssh login through the delay proxy" "$(ms "$t0" "$t1")" "-" "-" "-"
        DELTA_SIZE=${DELTA_SIZE:-1G}
    fi
    # One session per source tree: push-pem once, then timed sync --once into fresh slaves.
    ssh_sync() { # src dst [args] -> prints ms
        local src=$1 dst=$2; shift 2
        local home=$BASE/h-$RANDOM
        mkdir -p "$dst"
        GEOREP_HOME=$home "$BIN" create "$src" "$user@127.0.0.1:$port::$dst" push-pem \
            --identity "$OPERATOR_KEY" --remote-georep "$BIN" >/dev/null
        local t0; t0=$(now)
        # shellcheck disable=SC2086 # SSH_SYNC_ARGS: extra words, e.g. "--channels 1"
        GEOREP_HOME=$home "$BIN" sync "$src" "$user@127.0.0.1:$port::$dst" --once "$@" ${SSH_SYNC_ARGS:-} >/dev/null
        local t1; t1=$(now)
        GEOREP_HOME=$home "$BIN" delete "$src" "$user@127.0.0.1:$port::$dst" >/dev/null
        ms "$t0" "$t1"
    }
    # Interleaved: each run times the baseline, then georep, so a slow minute hits both. Nothing is
    # deleted until the end: ext4 without a journal avoids reusing recently deleted inodes, which
    # makes file creation right after a big `rm -r` several times slower for whoever runs next.
    # The pipe uses aes256-gcm, the cipher georep negotiates, in both baselines.
    cipher=aes256-gcm@openssh.com
    pipe_ms() { # file -> ms of cat file | ssh cat >/dev/null
        local t0; t0=$(now)
        ssh "${SSH_OPTS[@]}" -c "$cipher" "$user@127.0.0.1" 'cat > /dev/null' < "$1"
        ms "$t0" "$(now)"
    }
    rsync_ms() { # src -> ms of rsync -a into a fresh directory over the same sshd
        local d=$BASE/rs-$RANDOM; mkdir -p "$d"
        local t0; t0=$(now)
        rsync -a -e "ssh ${SSH_OPTS[*]}" "$1/" "$user@127.0.0.1:$d/"
        ms "$t0" "$(now)"
    }
    # pair BASELINE_FN SRC BASELINE_ARG [georep args] -> sets b_ms, g_ms (medians of RUNS
    # interleaved runs). The baseline's dirty pages are written back before georep starts,
    # untimed: georep syncs the filesystem before it acknowledges, and would otherwise pay for
    # rsync's writes too (both write to the same filesystem here).
    pair() {
        local base_fn=$1 src=$2 arg=$3; shift 3
        local bs=() gs=()
        for i in $(seq "$RUNS"); do
            bs+=("$($base_fn "$arg")")
            sync
            gs+=("$(ssh_sync "$src" "$BASE/ssh-d-$RANDOM" "$@")")
            sync
        done
        b_ms=$(printf '%s\n' "${bs[@]}" | median)
        g_ms=$(printf '%s\n' "${gs[@]}" | median)
    }
    if [ "$what" = wan ]; then
        # First copies at the RTT: 10,000 x 4 KiB, and 256 MiB of random data next to one
        # `ssh cat` (the SSH channel's window bounds both) and rsync -a.
        ws=$BASE/wan-small
        for d in $(seq -w 0 99); do
            mkdir -p "$ws/d$d"
            for f in $(seq -w 0 99); do head -c 4096 /dev/urandom > "$ws/d$d/f$f"; done
        done
        sync
        pair rsync_ms "$ws" "$ws"
        row "rsync -a $link, 10,000 x 4 KiB" "$b_ms" "1.00x" "-" "-"
        row "georep $link, 10,000 x 4 KiB" "$g_ms" "$(ratio "$g_ms" "$b_ms")" "-" "-"
        wb=$BASE/wan-big; mkdir -p "$wb"; head -c "${WAN_BIG:-256M}" /dev/urandom > "$wb/random.bin"
        sync
        pair pipe_ms "$wb" "$wb/random.bin" --compression 0
        row "cat ${WAN_BIG:-256M} random | ssh cat $link" "$b_ms" "1.00x" "-" "-"
        row "georep $link, ${WAN_BIG:-256M} random" "$g_ms" "$(ratio "$g_ms" "$b_ms")" "-" "-"
        pair rsync_ms "$wb" "$wb" --compression 0
        row "rsync -a $link, ${WAN_BIG:-256M} random" "$b_ms" "1.00x" "-" "-"
        row "georep $link, ${WAN_BIG:-256M} random" "$g_ms" "$(ratio "$g_ms" "$b_ms")" "-" "-"
    fi
    if [ "$what" = wan-channels ]; then
        # How many channels to stripe over (the `channels` default): the same first copies
        # with 1, 2, 4, 8 channels (CHANNELS_LIST), next to their baselines.
        ws=$BASE/wan-small
        for d in $(seq -w 0 99); do
            mkdir -p "$ws/d$d"
            for f in $(seq -w 0 99); do head -c 4096 /dev/urandom > "$ws/d$d/f$f"; done
        done
        wb=$BASE/wan-big; mkdir -p "$wb"; head -c "${WAN_BIG:-256M}" /dev/urandom > "$wb/random.bin"
        sync
        for c in ${CHANNELS_LIST:-1 2 4 8}; do
            pair rsync_ms "$ws" "$ws" --channels "$c"
            row "rsync -a $link, 10,000 x 4 KiB" "$b_ms" "1.00x" "-" "-"
            row "georep $link, 10,000 x 4 KiB, $c channels" "$g_ms" "$(ratio "$g_ms" "$b_ms")" "-" "-"
            pair pipe_ms "$wb" "$wb/random.bin" --compression 0 --channels "$c"
            row "cat ${WAN_BIG:-256M} random | ssh cat $link" "$b_ms" "1.00x" "-" "-"
            row "georep $link, ${WAN_BIG:-256M} random, $c channels" "$g_ms" "$(ratio "$g_ms" "$b_ms")" "-" "-"
        done
    fi
    if [ "$what" = ssh-append ] || [ "$what" = ssh ] || [ "$what" = all ] || [ "$what" = wan ]; then
        # A 256 MiB file that grows by 4 KiB between runs (a log, an append-only store): both
        # tools copy it once, then each run appends and times rsync -a (its delta algorithm:
        # checksums of the whole file on both sides) and georep (the tail alone).
        ap=$BASE/ssh-append; mkdir -p "$ap"; head -c 256M /dev/urandom > "$ap/db.log"
        ap_dst=$BASE/ap-dst; ap_rs=$BASE/ap-rs; mkdir -p "$ap_dst" "$ap_rs"
        ap_home=$BASE/h-append
        ap_slave="$user@127.0.0.1:$port::$ap_dst"
        GEOREP_HOME=$ap_home "$BIN" create "$ap" "$ap_slave" push-pem \
            --identity "$OPERATOR_KEY" --remote-georep "$BIN" >/dev/null
        GEOREP_HOME=$ap_home "$BIN" sync "$ap" "$ap_slave" --once >/dev/null
        rsync -a -e "ssh ${SSH_OPTS[*]}" "$ap/" "$user@127.0.0.1:$ap_rs/"
        rs=() gs=()
        for i in $(seq "$RUNS"); do
            head -c 4096 /dev/urandom >> "$ap/db.log"
            sync
            t0=$(now)
            rsync -a --stats -e "ssh ${SSH_OPTS[*]}" "$ap/" "$user@127.0.0.1:$ap_rs/" > "$BASE/ap-rs.txt"
            rs+=("$(ms "$t0" "$(now)")")
            sync
            t0=$(now)
            GEOREP_HOME=$ap_home "$BIN" sync "$ap" "$ap_slave" --once --json > "$BASE/ap.json"
            gs+=("$(ms "$t0" "$(now)")")
        done
        cmp "$ap/db.log" "$ap_dst/db.log" || { echo "the appended file differs on the slave" >&2; exit 1; }
        b_ms=$(printf '%s\n' "${rs[@]}" | median)
        g_ms=$(printf '%s\n' "${gs[@]}" | median)
        rs_sent=$(awk -F': ' '/Total bytes sent/ {gsub(",", "", $2); print $2}' "$BASE/ap-rs.txt")
        g_wire=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["wire_bytes"])' "$BASE/ap.json")
        row "rsync -a $link, 256 MiB + 4 KiB appended" "$b_ms" "1.00x" "sent ${rs_sent} B" "-"
        row "georep $link, 256 MiB + 4 KiB appended" "$g_ms" "$(ratio "$g_ms" "$b_ms")" "wire ${g_wire} B" "-"
        GEOREP_HOME=$ap_home "$BIN" delete "$ap" "$ap_slave" >/dev/null
    fi
    if [ "$what" = ssh-delta ] || [ "$what" = ssh ] || [ "$what" = all ] || [ "$what" = wan ]; then
        # A file of DELTA_SIZE (1 GiB) in which 4 KiB change in place between runs (a database,
        # a VM image): rsync -a (its delta algorithm) and georep (delta on by default over a
        # network), bytes both ways. rsync's: sent + received of its --stats; georep's: the
        # stream to the agent plus the block sums that came back.
        dl=$BASE/ssh-delta; mkdir -p "$dl"; head -c "${DELTA_SIZE:-1G}" /dev/urandom > "$dl/vm.img"
        dl_dst=$BASE/dl-dst; dl_rs=$BASE/dl-rs; mkdir -p "$dl_dst" "$dl_rs"
        dl_home=$BASE/h-delta
        dl_slave="$user@127.0.0.1:$port::$dl_dst"
        GEOREP_HOME=$dl_home "$BIN" create "$dl" "$dl_slave" push-pem \
            --identity "$OPERATOR_KEY" --remote-georep "$BIN" >/dev/null
        GEOREP_HOME=$dl_home "$BIN" sync "$dl" "$dl_slave" --once >/dev/null
        rsync -a -e "ssh ${SSH_OPTS[*]}" "$dl/" "$user@127.0.0.1:$dl_rs/"
        size=$(stat -c %s "$dl/vm.img")
        rs=() gs=()
        for i in $(seq "$RUNS"); do
            off=$(( (RANDOM * 32768 + RANDOM) % (size / 4096 - 1) ))
            head -c 4096 /dev/urandom | dd of="$dl/vm.img" bs=4096 seek="$off" conv=notrunc status=none
            sync
            t0=$(now)
            rsync -a --stats -e "ssh ${SSH_OPTS[*]}" "$dl/" "$user@127.0.0.1:$dl_rs/" > "$BASE/dl-rs.txt"
            rs+=("$(ms "$t0" "$(now)")")
            sync
            t0=$(now)
            GEOREP_HOME=$dl_home "$BIN" sync "$dl" "$dl_slave" --once --json > "$BASE/dl.json"
            gs+=("$(ms "$t0" "$(now)")")
        done
        cmp "$dl/vm.img" "$dl_dst/vm.img" || { echo "the changed file differs on the slave" >&2; exit 1; }
        b_ms=$(printf '%s\n' "${rs[@]}" | median)
        g_ms=$(printf '%s\n' "${gs[@]}" | median)
        rs_bytes=$(awk -F': ' '/Total bytes (sent|received)/ {gsub(",", "", $2); n += $2} END {print n}' "$BASE/dl-rs.txt")
        g_bytes=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["wire_bytes"] + r["sums_received"])' "$BASE/dl.json")
        mib=$(( size >> 20 ))
        row "rsync -a $link, 4 KiB changed in $mib MiB" "$b_ms" "1.00x" "${rs_bytes} B both ways" "-"
        row "georep $link, 4 KiB changed in $mib MiB" "$g_ms" "$(ratio "$g_ms" "$b_ms")" "${g_bytes} B both ways" "$(ratio "$g_bytes" "$rs_bytes") bytes"
        GEOREP_HOME=$dl_home "$BIN" delete "$dl" "$dl_slave" >/dev/null
    fi
    if [ "$what" != ssh-small ] && [ "$what" != ssh-append ] && [ "$what" != ssh-delta ] && [ "$what" != wan ] && [ "$what" != wan-channels ]; then
        big=$BASE/ssh-big; mkdir -p "$big"; head -c 1G /dev/urandom > "$big/random.bin"
        text=$BASE/ssh-text; mkdir -p "$text"
        python3 -c "
import sys
line = b'2026-11-21T08:26:23Z node1 georep[1234]: batch 42 applied, 8192 ops, stime advanced\\n'
with open(sys.argv[1], 'wb') as f:
    for i in range((1 << 30) // len(line) + 1):
        f.write(line)
" "$text/app.log"
        cat "$big/random.bin" "$text/app.log" > /dev/null
        # Written back before anything is timed: georep's syncfs would pay for it otherwise.
        sync
        pair pipe_ms "$big" "$big/random.bin"
        row "cat 1 GiB random | ssh cat>/dev/null" "$b_ms" "1.00x" "-" "-"
        row "georep over ssh, 1 GiB random (zstd 1)" "$g_ms" "$(ratio "$g_ms" "$b_ms")" "-" "-"
        pair pipe_ms "$big" "$big/random.bin" --compression 0
        row "cat 1 GiB random | ssh cat>/dev/null" "$b_ms" "1.00x" "-" "-"
        row "georep over ssh, 1 GiB random (zstd off)" "$g_ms" "$(ratio "$g_ms" "$b_ms")" "-" "-"
        pair pipe_ms "$text" "$text/app.log"
        row "cat 1 GiB text | ssh cat>/dev/null" "$b_ms" "1.00x" "-" "-"
        row "georep over ssh, 1 GiB text (zstd 1)" "$g_ms" "$(ratio "$g_ms" "$b_ms")" "-" "-"
    fi
    if [ "$what" != ssh-big ] && [ "$what" != ssh-append ] && [ "$what" != ssh-delta ] && [ "$what" != wan ] && [ "$what" != wan-channels ]; then
        small=$BASE/ssh-small
        make_small_tree "$small"
        cat "$small"/*/* > /dev/null
        sync
        pair rsync_ms "$small" "$small"
        row "rsync -a over ssh, 10,000 x 4 KiB" "$b_ms" "1.00x" "-" "-"
        row "georep over ssh, 10,000 x 4 KiB" "$g_ms" "$(ratio "$g_ms" "$b_ms")" "-" "-"
    fi
fi

# 10^6 small files (SCALE_DIRS x SCALE_FILES of 64 bytes): first sync and a no-change re-run,
# with the peak memory of both sides, next to rsync -a and a find stat pass in the same run.
if [ "$what" = scale ]; then
    command -v rsync >/dev/null || { apt-get install -y -qq rsync >/dev/null 2>&1 || true; }
    dirs=${SCALE_DIRS:-1000} files=${SCALE_FILES:-1000}
    n=$((dirs * files))
    src=$BASE/scale-m
    python3 - "$src" "$dirs" "$files" <<'PY'
import os, sys
root, dirs, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = b"x" * 64
for d in range(dirs):
    p = f"{root}/d{d:04}"
    os.makedirs(p, exist_ok=True)
    for f in range(files):
        fd = os.open(f"{p}/f{f:04}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
PY
    find "$src" -printf '' # warm the dentry and inode caches once, untimed
    t0=$(now); find "$src" -printf '%s %T@\n' > /dev/null; t1=$(now); find_ms=$(ms "$t0" "$t1")
    # peak RSS (KiB) of a command, via GNU time
    rss_of() { /usr/bin/time -f %M -o "$BASE/rss" "$@" > /dev/null && cat "$BASE/rss"; }
    rs_ms=- rs_noop_ms=- rs_rss=-
    if command -v rsync >/dev/null; then
        t0=$(now); rs_rss=$(rss_of rsync -a "$src/" "$BASE/scale-rs/"); t1=$(now); rs_ms=$(ms "$t0" "$t1")
        t0=$(now); rsync -a "$src/" "$BASE/scale-rs/"; t1=$(now); rs_noop_ms=$(ms "$t0" "$t1")
        rm -rf "$BASE/scale-rs"
    fi
    dst=$BASE/scale-s home=$BASE/scale-home
    mkdir -p "$dst"
    t0=$(now)
    GEOREP_HOME=$home "$BIN" sync "$src" "$dst" --once --json > "$BASE/scale1.json"
    t1=$(now); g_ms=$(ms "$t0" "$t1")
    t0=$(now)
    GEOREP_HOME=$home "$BIN" sync "$src" "$dst" --once --json > "$BASE/scale2.json"
    t1=$(now); g_noop_ms=$(ms "$t0" "$t1")
    # verify is the scrub's compare (the agent's listing merged with the brick walk as it
    # arrives): its time is a scrub pass's metadata cost, and its memory must not grow.
    t0=$(now)
    v_rss=$(GEOREP_HOME=$home /usr/bin/time -f %M -o "$BASE/rss" "$BIN" verify "$src" "$dst" > /dev/null && cat "$BASE/rss")
    t1=$(now); v_ms=$(ms "$t0" "$t1")
    field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
    [ "$(field "$BASE/scale1.json" files_sent)" = "$n" ] || { echo "first sync sent $(field "$BASE/scale1.json" files_sent) of $n files" >&2; exit 1; }
    [ "$(field "$BASE/scale2.json" files_sent)" = 0 ] || { echo "the no-change run sent files" >&2; exit 1; }
    vs() { [ "$2" = - ] && echo - || ratio "$1" "$2"; }
    row "scale: find stat pass, $n files" "$find_ms" "-" "-" "-"
    row "scale: rsync -a first copy, $n files" "$rs_ms" "1.00x" "${rs_rss} KiB" "-"
    row "scale: georep first sync (vs rsync)" "$g_ms" "$(vs "$g_ms" "$rs_ms")" "$(field "$BASE/scale1.json" master_peak_rss_kb) KiB" "$(field "$BASE/scale1.json" agent_peak_rss_kb) KiB"
    row "scale: rsync -a, nothing changed" "$rs_noop_ms" "1.00x" "-" "-"
    row "scale: georep, nothing changed (vs rsync)" "$g_noop_ms" "$(vs "$g_noop_ms" "$rs_noop_ms")" "$(field "$BASE/scale2.json" master_peak_rss_kb) KiB" "$(field "$BASE/scale2.json" agent_peak_rss_kb) KiB"
    row "scale: georep verify (a scrub pass's compare)" "$v_ms" "$(vs "$v_ms" "$find_ms") find" "${v_rss} KiB" "-"
fi

# GlusterFS: files written through a distributed volume's mount, replicated from its bricks
# onto a DR volume's mount; time until every file is on the DR mount with its content, and the
# mount -> DR latency. Gluster's own geo-replication in the same run with GLUSTER_GEOREP=1.
if [ "$what" = gluster ]; then
    gd=$BASE/glusterd gb=$BASE/gbricks
    scripts/glusterd.sh start "$gd" >/dev/null
    trap 'for m in "$BASE/gm" "$BASE/gdr"; do umount -l "$m" 2>/dev/null; done; scripts/glusterd.sh stop "$gd"; rm -rf "$BASE"' EXIT
    G() { gluster --glusterd-sock="$gd/run/glusterd.socket" --mode=script "$@" >/dev/null; }
    mkdir -p "$gb" "$BASE/gm" "$BASE/gdr"
    G volume create bench-m 127.1:"$gb/m1" 127.1:"$gb/m2" force
    G volume create bench-dr 127.1:"$gb/dr1" force
    G volume start bench-m; G volume start bench-dr
    mount -t glusterfs -o acl 127.0.0.1:/bench-m "$BASE/gm"
    mount -t glusterfs -o acl 127.0.0.1:/bench-dr "$BASE/gdr"
    home=$BASE/gl-home
    gr() { GEOREP_HOME=$home GEOREP_NODE=127.1 "$BIN" "$@"; }
    gr volume import bench-m --glusterd-sock "$gd/run/glusterd.socket" >/dev/null
    # GLUSTER_DR=dir: the DR side a plain directory (what the DR volume's FUSE mount costs).
    dr=$BASE/gdr
    if [ "${GLUSTER_DR:-}" = dir ]; then dr=$BASE/gdr-dir; mkdir -p "$dr"; fi
    gr volume create bench-dr "$dr" >/dev/null
    gr create bench-m bench-dr >/dev/null
    gr start bench-m bench-dr >/dev/null
    for _ in $(seq 1 300); do
        [ "$(gr status bench-m bench-dr --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(all(x["crawl_status"]=="Changelog Crawl" for x in r))')" = True ] && break
        sleep 0.1
    done
    # Writes 10,000 x 4 KiB in 100 directories, then waits until the DR side has each with
    # its content (a listing and a checksum of every file on both sides).
    write_and_wait() { # master-mount dr-mount -> prints ms
        python3 - "$1" "$2" <<'PY'
import hashlib, os, sys, time
m, d = sys.argv[1:3]
t0 = time.time()
want = {}
for i in range(100):
    os.makedirs(f"{m}/w{i}", exist_ok=True)
    for j in range(100):
        b = os.urandom(4096)
        with open(f"{m}/w{i}/f{j}", "wb") as f:
            f.write(b)
        want[f"w{i}/f{j}"] = hashlib.sha256(b).digest()
t_written = time.time()
deadline = t0 + 900
left = dict(want)
while left and time.time() < deadline:
    for p in list(left):
        try:
            with open(f"{d}/{p}", "rb") as f:
                if hashlib.sha256(f.read()).digest() == left[p]:
                    del left[p]
        except OSError:
            pass
    if left:
        time.sleep(0.2)
if left:
    raise SystemExit(f"{len(left)} files never arrived with their content")
print(int((time.time() - t0) * 1000), int((t_written - t0) * 1000))
PY
    }
    read -r g_ms w_ms < <(write_and_wait "$BASE/gm" "$dr")
    measure_latency "$BASE/gm" "$dr" "$BASE/gl-lat.txt" glat
    read -r p50 p99 pmax nlat < "$BASE/gl-lat.txt"
    gr stop bench-m bench-dr >/dev/null
    row "gluster: writing 10,000 x 4 KiB through the mount" "$w_ms" "-" "-" "-"
    row "gluster: georep, written until all on DR${GLUSTER_DR:+ ($GLUSTER_DR)}" "$g_ms" "-" "-" "-"
    row "gluster: georep mount->DR latency p50/p99" "$p50" "p99 $p99" "($nlat probes)" "-"
    if [ -n "${GLUSTER_GEOREP:-}" ]; then
        umount -l "$BASE/gm" "$BASE/gdr"
        scripts/glusterd.sh stop "$gd"
        scripts/gluster-georep.sh "$BASE/gluster-georep" > "$BASE/gg.txt"
        gg() { sed -n "s/^$1=//p" "$BASE/gg.txt"; }
        row "gluster: geo-replication, 10,000 x 4 KiB" "$(gg gluster_georep_10000_files_ms)" "$(ratio "$g_ms" "$(gg gluster_georep_10000_files_ms)") (georep)" "-" "-"
        row "gluster: geo-replication latency median" "$(gg gluster_latency_median_ms)" "max $(gg gluster_latency_max_ms)" "-" "-"
    fi
fi

echo
echo "georep benchmark $(date -u +%F) on $(nproc) cores, $(uname -r), runs=$RUNS (median)"
printf '%-44s %12s %8s %14s %14s\n' "case" "wall" "vs cp -a" "master RSS" "agent RSS"
printf '%s\n' "${rows[@]}"
