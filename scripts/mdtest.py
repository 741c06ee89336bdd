#!/usr/bin/env python3
"""mdtest-style metadata benchmark: P processes each create N/P files of
SIZE bytes in their own directory (open, write, close), then stat, read and
remove them, one phase at a time with a barrier between phases. Prints one
line per phase: `mdtest PHASE OPS_PER_S` (ops of all processes over the
phase's wall time, from the first start to the last finish). `--restat`
adds a second stat pass ("restat"): what the kernel's attribute cache
answers once the first pass has fetched every file's attributes.

Usage: mdtest.py DIR [--files 10000] [--procs 1] [--size 4096] [--restat]
"""
import argparse
import multiprocessing as mp
import os
import shutil
import time

PHASES = ["create", "stat", "read", "remove"]


def worker(root, rank, count, size, barrier, times):
    d = os.path.join(root, f"rank{rank}")
    os.makedirs(d, exist_ok=True)
    names = [os.path.join(d, f"f{i}") for i in range(count)]
    payload = os.urandom(size)
    for phase in PHASES:
        barrier.wait()
        t0 = time.perf_counter()
        if phase == "create":
            for n in names:
                fd = os.open(n, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
                os.write(fd, payload)
                os.close(fd)
        elif phase in ("stat", "restat"):
            for n in names:
                os.stat(n)
        elif phase == "read":
            for n in names:
                fd = os.open(n, os.O_RDONLY)
                got = os.read(fd, size + 1)
                os.close(fd)
                if len(got) != size:
                    raise SystemExit(f"{n}: read {len(got)} bytes, wrote {size}")
        else:
            for n in names:
                os.unlink(n)
        times[rank * len(PHASES) + PHASES.index(phase)] = time.perf_counter() - t0
        barrier.wait()
    os.rmdir(d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--restat", action="store_true")
    a = ap.parse_args()
    if a.restat:
        PHASES.insert(2, "restat")
    root = os.path.join(a.dir, f"mdtest.{os.getpid()}")
    os.makedirs(root)
    per = a.files // a.procs
    barrier = mp.Barrier(a.procs)
    times = mp.Array("d", a.procs * len(PHASES))
    ps = [
        mp.Process(target=worker, args=(root, r, per, a.size, barrier, times))
        for r in range(a.procs)
    ]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"mdtest worker failed with exit code {p.exitcode}")
    for i, phase in enumerate(PHASES):
        # phases start together at the barrier, so the slowest rank's time
        # is the phase's wall time
        wall = max(times[r * len(PHASES) + i] for r in range(a.procs))
        print(f"mdtest {phase} {per * a.procs / wall:.1f}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
