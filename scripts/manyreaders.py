#!/usr/bin/env python3
"""Reader side and summary of scripts/bench-manyreaders.sh.

  load  --start-at T FILE... : waits until T (epoch seconds), reads each file
        whole (1 MiB reads), CRC32 of each; prints one JSON line (start, end,
        bytes, per-file crc).
  meta  --start-at T --what stat|open DIR COUNT : stat (or open + close)
        DIR/f_00000 .. DIR/f_{COUNT-1}; prints one JSON line.
  make  DIR COUNT [--size B] [--procs P] : the writer's small files.
  summary FILE [LOADAVG] : the per-N JSON lines the script collected -> table + JSON.
"""
import json
import os
import sys
import time
import zlib
from multiprocessing import Pool


def wait_until(t):
    d = t - time.time()
    if d > 0:
        time.sleep(d)


def load(start_at, files):
    wait_until(start_at)
    t0 = time.time()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total, crcs = 0, {}
    for f in files:
        crc = 0
        with open(f, "rb", buffering=0) as fh:
            while True:
                n = fh.readinto(buf)
                if not n:
                    break
                crc = zlib.crc32(view[:n], crc)
                total += n
        crcs[os.path.basename(f)] = crc
    t1 = time.time()
    print(json.dumps({"start": t0, "end": t1, "bytes": total, "crc": crcs}))


def name(d, i):
    return f"{d}/f_{i:05d}"


def meta(start_at, what, d, count):
    wait_until(start_at)
    t0 = time.time()
    if what == "stat":
        for i in range(count):
            os.stat(name(d, i))
    else:
        for i in range(count):
            os.close(os.open(name(d, i), os.O_RDONLY))
    t1 = time.time()
    print(json.dumps({"start": t0, "end": t1, "ops": count}))


def _make(args):
    d, count, size, r, procs = args
    body = b"x" * size
    for i in range(r, count, procs):
        with open(name(d, i), "wb") as f:
            f.write(body)


def make(d, count, size, procs):
    os.makedirs(d, exist_ok=True)
    with Pool(procs) as p:
        p.map(_make, [(d, count, size, r, procs) for r in range(procs)])


def summary(path, loadavg):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    base = rows[0] if rows else None
    print(f"data: {base['files']} x {base['file_mib']} MiB per reader; "
          f"metadata: {base['small']} files" if base else "no rows")
    print(f"{'N':>2} {'load agg':>9} {'per reader MiB/s':>17} {'GET MiB/reader':>14} "
          f"{'Redis CPU s':>11} {'Redis ops/s':>11}")
    for r in rows:
        pr = r["per_reader_mibs"]
        gets = r["get_mib"]
        print(f"{r['n']:>2} {r['agg_mibs']:>9.1f} "
              f"{min(pr):>5.0f}/{sum(pr) / len(pr):>5.0f}/{max(pr):>5.0f} "
              f"{min(gets):>6.1f}-{max(gets):<7.1f} "
              f"{r['redis_cpu_load']:>11.2f} {r['redis_ops_load']:>11.0f}")
    print("per reader MiB/s: min/mean/max of the first load; GET MiB/reader: store bytes each "
          "reader daemon fetched over both loads (first + again, page cache dropped between)")
    print()
    print(f"{'N':>2} {'stat/s':>8} {'x N=1':>6} {'open/s':>8} {'x N=1':>6} "
          f"{'cmds/file':>10} {'reqs/file':>10} {'Redis CPU s':>11} {'Redis busy':>10}")
    for r in rows:
        print(f"{r['n']:>2} {r['stat_agg']:>8.0f} {r['stat_agg'] / base['stat_agg']:>6.2f} "
              f"{r['open_agg']:>8.0f} {r['open_agg'] / base['open_agg']:>6.2f} "
              f"{r['redis_per_file_stat']:>4.2f}/{r['redis_per_file_open']:<5.2f} "
              f"{r.get('req_per_file_stat', 0):>4.2f}/{r.get('req_per_file_open', 0):<5.2f} "
              f"{r.get('redis_cpu_stat', 0):>5.2f}/{r.get('redis_cpu_open', 0):<5.2f} "
              f"{100 * r.get('redis_busy_stat', 0):>9.0f}%")
    print("aggregate ops/s of all readers at once; 'x N=1': over N=1's; per file per reader, "
          "stat/open: Redis commands (a lookup script counts 4) and daemon requests (round "
          "trips); Redis CPU s stat/open phase; Redis busy: its CPU share of the stat phase")
    print(f"load average at the end: {loadavg} ({os.cpu_count()} cores)")
    print(json.dumps({"manyreaders": rows, "loadavg": loadavg}))


def main():
    a = sys.argv[1:]
    cmd = a.pop(0)
    if cmd in ("load", "meta"):
        assert a.pop(0) == "--start-at"
        t = float(a.pop(0))
        if cmd == "load":
            load(t, a)
        else:
            assert a.pop(0) == "--what"
            meta(t, a[0], a[1], int(a[2]))
    elif cmd == "make":
        size = int(a[a.index("--size") + 1]) if "--size" in a else 1024
        procs = int(a[a.index("--procs") + 1]) if "--procs" in a else 4
        make(a[0], int(a[1]), size, procs)
    elif cmd == "summary":
        summary(a[0], a[1] if len(a) > 1 else "")
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
