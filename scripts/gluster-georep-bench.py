#!/usr/bin/python3
"""Writers and pollers for the GlusterFS geo-replication baseline (run by scripts/gluster-georep.sh).

  bench.py bulk  MASTER SLAVE NFILES NDIRS SIZE POLL TIMEOUT   -> key=value lines
  bench.py probe MASTER SLAVE N POLL TIMEOUT                   -> key=value lines
  bench.py check MASTER SLAVE NFILES SIZE TIMEOUT              -> key=value lines (rsync sanity)

Times are wall-clock (time.monotonic) in milliseconds.
"""
import hashlib
import os
import random
import statistics
import sys
import time


def now():
    return time.monotonic()


def ms(a, b):
    return int(round((b - a) * 1000))


def read_fresh(path):
    """Read a file on a FUSE mount, asking the kernel to drop cached pages first."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_file(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class Tracker:
    """Files still to see on the slave with the right content, checked incrementally."""

    def __init__(self, slave, expected):
        self.slave = slave
        self.pending = {}  # dir -> {name: (size, sha)}
        for rel, (size, sha) in expected.items():
            d, n = os.path.split(rel)
            self.pending.setdefault(d, {})[n] = (size, sha)
        self.states = {}

    def remaining(self):
        return sum(len(v) for v in self.pending.values())

    def poll(self):
        for d in list(self.pending):
            want = self.pending[d]
            try:
                present = set(os.listdir(os.path.join(self.slave, d)))
            except OSError:
                continue
            for n in list(want):
                if n not in present:
                    continue
                p = os.path.join(self.slave, d, n)
                size, sha = want[n]
                try:
                    st = os.stat(p)
                    if st.st_size != size:
                        self.states[os.path.join(d, n)] = "empty" if st.st_size == 0 else "wrong_size"
                        continue
                    if hashlib.sha256(read_fresh(p)).hexdigest() != sha:
                        self.states[os.path.join(d, n)] = "wrong_content"
                        continue
                except OSError:
                    continue
                self.states.pop(os.path.join(d, n), None)
                del want[n]
            if not want:
                del self.pending[d]
        return self.remaining()


def bulk(master, slave, nfiles, ndirs, size, poll, timeout):
    tag = "bulk-%d-%d" % (os.getpid(), int(time.time()))
    expected = {}
    t0 = now()
    os.mkdir(os.path.join(master, tag))
    for i in range(ndirs):
        os.mkdir(os.path.join(master, tag, "d%03d" % i))
    for i in range(nfiles):
        rel = os.path.join(tag, "d%03d" % (i % ndirs), "f%05d" % i)
        data = os.urandom(size)
        write_file(os.path.join(master, rel), data)
        expected[rel] = (size, hashlib.sha256(data).hexdigest())
    t_written = now()
    print("bulk_write_done_ms=%d" % ms(t0, t_written), file=sys.stderr, flush=True)
    tr = Tracker(slave, expected)
    last_log = 0
    t_done = None
    while True:
        left = tr.poll()
        t = now()
        if left == 0:
            t_done = t
            break
        if t - t0 > timeout:
            break
        if t - last_log >= 5:
            print("  +%6.1fs: %d/%d files verified on the slave" % (t - t0, nfiles - left, nfiles),
                  file=sys.stderr, flush=True)
            last_log = t
        time.sleep(poll)
    print("bulk_files=%d" % nfiles)
    print("bulk_file_size=%d" % size)
    print("bulk_dirs=%d" % ndirs)
    print("bulk_write_ms=%d" % ms(t0, t_written))
    if t_done is None:
        print("bulk_sync_ms=timeout")
        print("bulk_missing=%d" % tr.remaining())
        kinds = {}
        for s in tr.states.values():
            kinds[s] = kinds.get(s, 0) + 1
        for k, v in sorted(kinds.items()):
            print("bulk_bad_%s=%d" % (k, v))
        return 1
    # Full re-verification of every file (not timed) to be sure nothing regressed.
    bad = 0
    for rel, (sz, sha) in expected.items():
        try:
            if hashlib.sha256(read_fresh(os.path.join(slave, rel))).hexdigest() != sha:
                bad += 1
        except OSError:
            bad += 1
    print("bulk_sync_ms=%d" % ms(t0, t_done))
    print("bulk_reverify_bad=%d" % bad)
    return 0


def probe(master, slave, n, poll, timeout):
    os.makedirs(os.path.join(master, "probes"), exist_ok=True)
    lats = []
    failed = 0
    consecutive = 0
    for i in range(n):
        time.sleep(random.uniform(1.0, 5.0))  # jitter so probes don't lock onto the rollover phase
        name = "p-%d-%d-%d" % (os.getpid(), i, int(time.time() * 1000))
        data = ("probe %s %s\n" % (name, os.urandom(8).hex())).encode()
        rel = os.path.join("probes", name)
        t0 = now()
        write_file(os.path.join(master, rel), data)
        t_done = None
        while now() - t0 < timeout:
            try:
                if read_fresh(os.path.join(slave, rel)) == data:
                    t_done = now()
                    break
            except OSError:
                pass
            time.sleep(poll)
        if t_done is None:
            failed += 1
            print("  probe %d: timeout" % i, file=sys.stderr, flush=True)
            consecutive += 1
            if consecutive >= 2:
                print("  two timeouts in a row: giving up", file=sys.stderr, flush=True)
                break
        else:
            consecutive = 0
            lats.append(ms(t0, t_done))
            print("  probe %d: %d ms" % (i, lats[-1]), file=sys.stderr, flush=True)
    print("latency_probes=%d" % n)
    print("latency_failed=%d" % failed)
    print("latency_all_ms=%s" % ",".join(str(x) for x in lats))
    if lats:
        print("latency_median_ms=%d" % int(statistics.median(lats)))
        print("latency_max_ms=%d" % max(lats))
        print("latency_min_ms=%d" % min(lats))
    return 0 if not failed else 1


def check(master, slave, nfiles, size, timeout):
    tag = "rsynccheck-%d-%d" % (os.getpid(), int(time.time()))
    os.mkdir(os.path.join(master, tag))
    expected = {}
    t0 = now()
    for i in range(nfiles):
        rel = os.path.join(tag, "f%03d" % i)
        data = os.urandom(size)
        write_file(os.path.join(master, rel), data)
        expected[rel] = (size, hashlib.sha256(data).hexdigest())
    tr = Tracker(slave, expected)
    t_done = None
    while now() - t0 < timeout:
        if tr.poll() == 0:
            t_done = now()
            break
        time.sleep(0.5)
    # classify what the slave has for every file
    ok = empty = wrong = missing = 0
    missing_list = []
    for rel, (sz, sha) in expected.items():
        p = os.path.join(slave, rel)
        try:
            st = os.stat(p)
        except OSError:
            missing += 1
            missing_list.append(rel)
            continue
        if st.st_size == 0:
            empty += 1
        elif hashlib.sha256(read_fresh(p)).hexdigest() == sha:
            ok += 1
        else:
            wrong += 1
    print("check_files=%d" % nfiles)
    print("check_ok=%d" % ok)
    print("check_empty=%d" % empty)
    print("check_wrong=%d" % wrong)
    print("check_missing=%d" % missing)
    print("check_ms=%s" % (ms(t0, t_done) if t_done else "timeout"))
    print("check_missing_list=%s" % ",".join(missing_list))
    return 0


def main():
    cmd = sys.argv[1]
    a = sys.argv[2:]
    if cmd == "bulk":
        return bulk(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), float(a[5]), float(a[6]))
    if cmd == "probe":
        return probe(a[0], a[1], int(a[2]), float(a[3]), float(a[4]))
    if cmd == "check":
        return check(a[0], a[1], int(a[2]), int(a[3]), float(a[4]))
    print("unknown command", cmd, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
