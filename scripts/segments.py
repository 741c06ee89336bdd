#!/usr/bin/env python3
"""Writer, reader and summary of scripts/bench-segments.sh (issue 11).

  write    inserts BATCHES batches of ROWS x DIM float32 (seeded) at random
           intervals, each as a Milvus-1.x segment directory
           db/tables/<collection>/<segment>/ with <id>.rv, <id>.uid,
           bloom_filter and deleted_docs; appends one JSON line per finished
           segment to the manifest (the out-of-band channel a Milvus reader
           learns from), with each file's size and CRC32 and a query whose
           top-10 answer it computed from the vectors in memory.
  read     tails the manifest; for each segment: time until its files show
           with their final sizes under the reader's root, then, READER_DELAY
           after it learned of the segment, loads .rv and .uid whole (header,
           then the rest), bloom_filter and deleted_docs, checks every CRC
           and answers the query; scrapes the vecfs daemon's metrics around
           each load. One JSON line per batch and pass to --out.
  summary  reads every --out file and prints a table (mean/p50/p95 per
           column), a per-reader byte table and one JSON line.
"""
import argparse
import glob
import json
import os
import queue
import struct
import sys
import threading
import time
import urllib.request
import zlib

import numpy as np

FILES = ("rv", "uid", "bloom_filter", "deleted_docs")
BLOOM_BITS = 1 << 22  # 512 KiB, as a Milvus 1.x bloom filter of ~100k ids
JUICEFS_FIRST_QUERY_S = 0.032  # the seed's published JuiceFS figure


def topk(x, ids, q, k=10):
    """Brute-force L2 top-k: the same code on both sides, so the answer is exact."""
    d = np.einsum("ij,ij->i", x, x) - 2.0 * (x @ q)
    top = np.argpartition(d, k)[:k]
    top = top[np.argsort(d[top], kind="stable")]
    return [int(i) for i in ids[top]]


def write_all(path, data):
    """One large write (looping only on a short write), close, no fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        mv = memoryview(data)
        while mv:
            n = os.write(fd, mv)
            mv = mv[n:]
    finally:
        os.close(fd)


def bloom(ids):
    bits = np.zeros(BLOOM_BITS, dtype=np.uint8)
    u = ids.astype(np.uint64)
    for a, c in ((0x9E3779B97F4A7C15, 1), (0xC2B2AE3D27D4EB4F, 7), (0x165667B19E3779F9, 13)):
        with np.errstate(over="ignore"):
            h = (u * np.uint64(a) + np.uint64(c)) >> np.uint64(40)
        bits[(h % np.uint64(BLOOM_BITS)).astype(np.int64)] = 1
    return np.packbits(bits).tobytes()


def cmd_write(a):
    lo, hi = a.interval
    rng = np.random.default_rng(a.seed)
    pause = np.random.default_rng(a.seed + 1)
    seg_root = os.path.join(a.root, "db", "tables", a.collection)
    os.makedirs(seg_root, exist_ok=True)
    with open(a.manifest, "a") as man:
        for b in range(a.batches):
            time.sleep(pause.uniform(lo, hi))
            x = rng.standard_normal((a.rows, a.dim), dtype=np.float32)
            ids = np.arange(b * a.rows, (b + 1) * a.rows, dtype=np.int64)
            j = int(rng.integers(a.rows))
            q = x[j] + np.float32(0.05) * rng.standard_normal(a.dim, dtype=np.float32)
            expected = topk(x, ids, q)
            seg_id = 1_600_000_000_000_000 + b
            d = os.path.join(seg_root, str(seg_id))
            body = {
                "rv": struct.pack("<Q", x.nbytes) + x.tobytes(),
                "uid": struct.pack("<Q", ids.nbytes) + ids.tobytes(),
                "bloom_filter": bloom(ids),
                "deleted_docs": struct.pack("<Q", 0),
            }
            names = {"rv": f"{seg_id}.rv", "uid": f"{seg_id}.uid",
                     "bloom_filter": "bloom_filter", "deleted_docs": "deleted_docs"}
            t0 = time.time()
            os.mkdir(d)
            write_all(os.path.join(d, names["rv"]), body["rv"])
            write_all(os.path.join(d, names["uid"]), body["uid"])
            # bloom_filter and deleted_docs: a first version, then the final
            # one written as a temp file and renamed over it (as Milvus does)
            write_all(os.path.join(d, "bloom_filter"), bytes(len(body["bloom_filter"])))
            write_all(os.path.join(d, "deleted_docs"), struct.pack("<Q", 1 << 63))
            for k in ("bloom_filter", "deleted_docs"):
                tmp = os.path.join(d, names[k] + ".tmp")
                write_all(tmp, body[k])
                os.rename(tmp, os.path.join(d, names[k]))
            t1 = time.time()
            entry = {
                "batch": b, "dir": os.path.relpath(d, a.root), "t_start": t0, "t_commit": t1,
                "files": {k: {"name": names[k], "size": len(body[k]), "crc": zlib.crc32(body[k])}
                          for k in FILES},
                "q": q.tolist(), "expected": expected, "rows": a.rows, "dim": a.dim,
            }
            man.write(json.dumps(entry) + "\n")
            man.flush()
            print(f"writer: batch {b} written in {t1 - t0:.2f} s", file=sys.stderr)
        man.write(json.dumps({"end": True}) + "\n")


def scrape(url):
    if not url:
        return {}
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition(" ")
            out[k] = float(v)
    return out


def delta(after, before, key):
    if key not in after:
        return None
    return after[key] - before.get(key, 0.0)


def tail(path, deadline_s):
    """Yields manifest entries as the writer appends them."""
    while not os.path.exists(path):
        time.sleep(0.002)
    with open(path) as f:
        buf = ""
        last = time.time()
        while True:
            chunk = f.readline()
            if not chunk:
                if time.time() - last > deadline_s:
                    raise SystemExit(f"reader: no manifest entry for {deadline_s} s")
                time.sleep(0.002)
                continue
            buf += chunk
            if not buf.endswith("\n"):
                continue
            entry, buf, last = json.loads(buf), "", time.time()
            if entry.get("end"):
                return
            yield entry
            last = time.time()  # the wait counts from here, not from before the visibility poll


def read_whole(path, header):
    """Open, read the 8-byte header (when the format has one), then the rest
    in one read() call (looping on short reads). Returns (bytes, open_s, read_s)."""
    t0 = time.time()
    fd = os.open(path, os.O_RDONLY)
    t1 = time.time()
    try:
        if header:
            head = os.read(fd, 8)
            n = struct.unpack("<Q", head)[0]
        else:
            head, n = b"", os.fstat(fd).st_size
        buf = bytearray(len(head) + n)
        buf[: len(head)] = head
        mv = memoryview(buf)[len(head):]
        while mv:
            got = os.readv(fd, [mv])
            if got == 0:
                raise OSError(f"{path}: short file ({len(buf) - len(mv)} of {len(buf)} bytes)")
            mv = mv[got:]
    finally:
        os.close(fd)
    return buf, t1 - t0, time.time() - t1


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def load_and_query(a, e):
    """One load of the segment: returns the timings and whether all is right."""
    d = os.path.join(a.root, e["dir"])
    r = {"open_s": 0.0, "read_s": 0.0, "errors": []}
    t_first = time.time()
    bufs = {}
    for k in FILES:
        try:
            bufs[k], o, rd = read_whole(os.path.join(d, e["files"][k]["name"]), k in ("rv", "uid"))
        except OSError as err:
            r["errors"].append(f"{k}: {err}")
            continue
        r["open_s"] += o
        r["read_s"] += rd
    t_read = time.time()
    ok = not r["errors"]
    for k, buf in bufs.items():
        want = e["files"][k]
        if len(buf) != want["size"]:
            r["errors"].append(f"{k}: {len(buf)} bytes, want {want['size']}")
            ok = False
        elif zlib.crc32(buf) != want["crc"]:
            r["errors"].append(f"{k}: checksum mismatch")
            ok = False
    t_check = time.time()
    answer = None
    if ok:
        x = np.frombuffer(bufs["rv"], dtype=np.float32, offset=8).reshape(e["rows"], e["dim"])
        ids = np.frombuffer(bufs["uid"], dtype=np.int64, offset=8)
        answer = topk(x, ids, np.asarray(e["q"], dtype=np.float32))
        if answer != e["expected"]:
            r["errors"].append("wrong top-10 answer")
    t_answer = time.time()
    r.update(t_first=t_first, read_part_s=t_read - t_first, check_s=t_check - t_read,
             query_s=t_answer - t_check, load_query_s=t_answer - t_first,
             ok=ok and answer == e["expected"], bytes=sum(len(b) for b in bufs.values()))
    return r


def watch(a, q):
    """Tails the manifest; for each segment stamps when the reader learned of
    it and polls until this mount shows every file with its final size, then
    hands it to the loader. A thread of its own, so a slow load never delays
    the visibility figure of the next segment."""
    try:
        for e in tail(a.manifest, a.timeout):
            e["t_notify"] = time.time()
            d = os.path.join(a.root, e["dir"])
            e["t_visible"] = None
            while time.time() - e["t_notify"] < a.timeout:
                try:
                    if all(os.stat(os.path.join(d, f["name"])).st_size == f["size"]
                           for f in e["files"].values()):
                        e["t_visible"] = time.time()
                        break
                except OSError:
                    pass
                time.sleep(0.002)
            q.put(e)
    finally:
        q.put(None)


def cmd_read(a):
    passes = a.passes.split(",")
    last = scrape(a.metrics)
    out = open(a.out, "a")
    q = queue.Queue()
    threading.Thread(target=watch, args=(a, q), daemon=True).start()
    while (e := q.get()) is not None:
        t_notify, visible = e["t_notify"], e["t_visible"]
        for p in passes:
            if p == "cold":
                drop_caches()
            wait = t_notify + a.reader_delay - time.time()
            if p == passes[0] and wait > 0:
                time.sleep(wait)
            before = scrape(a.metrics)
            r = load_and_query(a, e)
            after = scrape(a.metrics)
            rec = {
                "target": a.target, "reader": a.reader, "pass": p, "batch": e["batch"],
                "visible_s": None if visible is None else visible - e["t_commit"],
                "notify_s": t_notify - e["t_commit"], "write_s": e["t_commit"] - e["t_start"],
                "start_after_commit_s": r.pop("t_first") - e["t_commit"],
            }
            rec.update(r)
            for key, name in (("vecfs_object_get_bytes_total", "fetched"),
                              ("vecfs_mem_cache_hit_total", "mem_hits"),
                              ("vecfs_disk_cache_hit_total", "disk_hits"),
                              ("vecfs_object_get_total", "gets"),
                              ("vecfs_object_range_get_total", "range_gets"),
                              ("vecfs_warm_bytes_total", "warmed"),
                              ("vecfs_warm_skipped_total", "warm_skipped"),
                              ("vecfs_page_cache_pushed_bytes_total", "pushed")):
                rec[name + "_load"] = delta(after, before, key)
                rec[name + "_batch"] = delta(after, last, key)
            last = after
            out.write(json.dumps(rec) + "\n")
            out.flush()
            status = "ok" if rec["ok"] else "FAILED " + "; ".join(rec["errors"])
            print(f"reader {a.target}#{a.reader} batch {e['batch']} {p}: load+query "
                  f"{rec['load_query_s']:.3f} s, read {rec['read_part_s']:.3f} s, {status}",
                  file=sys.stderr)


def stats(v):
    v = sorted(x for x in v if x is not None)
    if not v:
        return None
    pct = lambda p: v[min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.5)) - 1))]
    return {"mean": sum(v) / len(v), "p50": pct(50), "p95": pct(95), "n": len(v)}


def cmd_summary(a):
    recs = []
    for path in sorted(glob.glob(os.path.join(a.dir, "*.jsonl"))):
        with open(path) as f:
            recs += [json.loads(line) for line in f if line.strip()]
    notes = []
    if a.notes and os.path.exists(a.notes):
        notes = [line.rstrip() for line in open(a.notes) if line.strip()]
    cols = {}
    for r in recs:
        multi = len({x["pass"] for x in recs if x["target"] == r["target"]}) > 1
        cols.setdefault(r["target"] + (f" {r['pass']}" if multi else ""), []).append(r)
    names = list(cols)
    mb = 1 / 1e6

    def col(rs, key, scale=1.0):
        # timings of failed loads (checksum, answer, I/O error) are left out
        return stats([r[key] * scale if r.get(key) is not None else None for r in rs if r["ok"]])

    rows = [
        ("visible after close, s", "visible_s", 1.0, ("mean", "p50", "p95")),
        ("load + first query, s", "load_query_s", 1.0, ("mean", "p50", "p95")),
        ("read part, s", "read_part_s", 1.0, ("mean", "p50", "p95")),
        ("  open (4 files), s", "open_s", 1.0, ("mean",)),
        ("  checksum, s", "check_s", 1.0, ("mean",)),
        ("  query CPU, s", "query_s", 1.0, ("mean",)),
        ("load start after close, s", "start_after_commit_s", 1.0, ("mean",)),
        ("writer: segment write, s", "write_s", 1.0, ("mean",)),
        ("fetched from store during load, MB", "fetched_load", mb, ("mean",)),
        ("fetched from store per batch, MB", "fetched_batch", mb, ("mean",)),
        ("warmed by warm-on-commit per batch, MB", "warmed_batch", mb, ("mean",)),
        ("pushed into page cache per batch, MB", "pushed_batch", mb, ("mean",)),
        ("warm-ups skipped per batch", "warm_skipped_batch", 1.0, ("mean",)),
        ("block GETs during load", "gets_load", 1.0, ("mean",)),
        ("memory-cache hits during load", "mem_hits_load", 1.0, ("mean",)),
        ("disk-cache hits during load", "disk_hits_load", 1.0, ("mean",)),
    ]
    summary = {}
    w = max(14, *(len(n) + 2 for n in names))
    lines = ["figure".ljust(40) + "".join(n.rjust(w) for n in names)]
    for label, key, scale, kinds in rows:
        per = [col(cols[n], key, scale) for n in names]
        if all(p is None for p in per):
            continue
        for k in kinds:
            cells = ["n/a" if p is None else f"{p[k]:.3f}" for p in per]
            lines.append(f"{label} {k}".ljust(40) + "".join(c.rjust(w) for c in cells))
        for n, p in zip(names, per):
            summary.setdefault(n, {})[key] = p
    for n in names:
        bad = [r for r in cols[n] if not r["ok"]]
        summary[n]["batches"] = len(cols[n])
        summary[n]["failures"] = len(bad)
        summary[n]["errors"] = sorted({e for r in bad for e in r["errors"]})[:5]
    lines.append("loads failed (left out above)".ljust(40)
                 + "".join(str(summary[n]["failures"]).rjust(w) for n in names))
    # ratios against the local disk
    base = {k: summary.get(k, {}).get("load_query_s") for k in names if k.startswith("local")}
    for b, bs in base.items():
        if not bs:
            continue
        cells = []
        for n in names:
            s = summary[n].get("load_query_s")
            cells.append("n/a" if not s else f"{s['mean'] / bs['mean']:.2f}x")
        lines.append(f"load+query mean / {b}".ljust(40) + "".join(c.rjust(w) for c in cells))
        rb = summary[b].get("read_part_s")
        cells = []
        for n in names:
            s = summary[n].get("read_part_s")
            cells.append("n/a" if not (s and rb) else f"{s['mean'] / rb['mean']:.2f}x")
        lines.append(f"read part mean / {b}".ljust(40) + "".join(c.rjust(w) for c in cells))
    cells = []
    for n in names:
        s = summary[n].get("load_query_s")
        cells.append("n/a" if not s else f"{s['mean'] / JUICEFS_FIRST_QUERY_S:.2f}x")
    lines.append("load+query mean / JuiceFS 0.032 s".ljust(40) + "".join(c.rjust(w) for c in cells))
    print("\n".join(lines))
    print(f"(JuiceFS reference, the seed's published figure: {JUICEFS_FIRST_QUERY_S} s mean first query)")

    # per reader: everything it fetched over the run, against the data it read
    per_reader = {}
    for r in recs:
        k = (r["target"], r["reader"])
        pr = per_reader.setdefault(k, {"fetched": 0.0, "read": 0, "loads": 0})
        pr["fetched"] += r.get("fetched_batch") or 0.0
        pr["read"] += r["bytes"]
        pr["loads"] += 1
    net = {}
    if a.net and os.path.exists(a.net):
        for line in open(a.net):
            t, rd, v = line.split()
            net[(t, int(rd))] = float(v)
    if per_reader:
        print()
        print("per reader: target#reader   loads   read by app MB   fetched from store MB   "
              "fetched / data   veth rx MB")
        for (t, rd), pr in sorted(per_reader.items()):
            seg_bytes = {r["batch"]: r["bytes"] for r in recs if r["target"] == t and r["reader"] == rd}
            data = sum(seg_bytes.values())
            fetched = pr["fetched"] if any(r.get("fetched_batch") is not None for r in recs
                                           if r["target"] == t and r["reader"] == rd) else None
            nb = net.get((t, rd))
            print(f"  {t}#{rd}".ljust(27) + f"{pr['loads']:>7}{pr['read'] * mb:>17.1f}"
                  + ("n/a" if fetched is None else f"{fetched * mb:.1f}").rjust(24)
                  + ("n/a" if fetched is None or not data else f"{fetched / data:.2f}").rjust(17)
                  + ("n/a" if nb is None else f"{nb * mb:.1f}").rjust(13))
            summary.setdefault(f"{t} readers", {})[str(rd)] = {
                "loads": pr["loads"], "read_mb": pr["read"] * mb,
                "fetched_mb": None if fetched is None else fetched * mb,
                "data_mb": data * mb, "veth_rx_mb": None if nb is None else nb * mb}
    for n in notes:
        print("note:", n)
    print(json.dumps({"bench": "segments", "juicefs_first_query_s": JUICEFS_FIRST_QUERY_S,
                      "params": a.params and json.loads(a.params), "columns": summary,
                      "notes": notes}, sort_keys=True))


def interval(s):
    lo, _, hi = s.partition("-")
    lo = float(lo)
    hi = float(hi) if hi else lo
    if lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError("--interval MIN[-MAX] with 0 <= MIN <= MAX")
    return lo, hi


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("--root", required=True)
    w.add_argument("--manifest", required=True)
    w.add_argument("--collection", default="bench")
    w.add_argument("--batches", type=int, default=10)
    w.add_argument("--rows", type=int, default=100_000)
    w.add_argument("--dim", type=int, default=128)
    w.add_argument("--seed", type=int, default=42)
    w.add_argument("--interval", type=interval, default=(1.0, 8.0))
    r = sub.add_parser("read")
    r.add_argument("--root", required=True)
    r.add_argument("--manifest", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--target", required=True)
    r.add_argument("--reader", type=int, default=1)
    r.add_argument("--passes", default="first",
                   help="loads per segment, comma separated; 'cold' drops the kernel caches first")
    r.add_argument("--metrics", default="", help="URL of the vecfs daemon's metrics")
    r.add_argument("--reader-delay", type=float, default=1.0)
    r.add_argument("--timeout", type=float, default=300.0)
    s = sub.add_parser("summary")
    s.add_argument("--dir", required=True)
    s.add_argument("--net", default="")
    s.add_argument("--notes", default="")
    s.add_argument("--params", default="")
    a = p.parse_args()
    {"write": cmd_write, "read": cmd_read, "summary": cmd_summary}[a.cmd](a)


if __name__ == "__main__":
    main()
