#!/usr/bin/env python3
"""Prints the results of scripts/bench-fio.sh (TSV: target, figure, value)
as one table with vecfs's ratio to each peer, then checks the targets of
issue 4. Usage: bench-table.py RESULTS.tsv [--rss-limit-mib 912]"""
import argparse
import collections

PEERS = ("local", "s3fs", "rclone")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    # --buffer-size 300 MiB + --mem-cache-size 512 MiB + 100 MiB (defaults)
    ap.add_argument("--rss-limit-mib", type=float, default=912)
    a = ap.parse_args()
    res = collections.defaultdict(dict)
    figures = []
    for line in open(a.results):
        target, fig, value = line.rstrip("\n").split("\t")
        try:
            res[fig][target] = float(value)
        except ValueError:
            res[fig][target] = None
        if fig not in figures:
            figures.append(fig)

    def cell(v):
        return "-" if v is None else f"{v:.1f}" if v < 100 else f"{v:.0f}"

    def ratio(fig, peer):
        v, p = res[fig].get("vecfs"), res[fig].get(peer)
        return f"{v / p:.2f}x" if v and p else "-"

    head = ["figure", "s3 raw", "local", "vecfs", "s3fs", "rclone"] + [f"vecfs/{p}" for p in PEERS]
    rows = []
    for fig in figures:
        r = res[fig]
        rows.append([fig, cell(r.get("s3")), cell(r.get("local")), cell(r.get("vecfs")),
                     cell(r.get("s3fs")), cell(r.get("rclone"))] + [ratio(fig, p) for p in PEERS])
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    for row in [head, ["-" * w for w in widths]] + rows:
        print("| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                for i, (c, w) in enumerate(zip(row, widths))) + " |")

    def get(fig, t):
        return res.get(fig, {}).get(t)

    checks = []

    def check(name, v, bound, factor):
        if v is None or bound is None:
            checks.append((name, "not measured", ""))
            return
        ok = v >= bound * factor
        checks.append((name, "met" if ok else "MISSED", f"{v:.1f} vs {factor:g} x {bound:.1f}"))

    w1, c1 = "seq write 1 job MiB/s", "cold seq read 1 job MiB/s"
    check("seq write >= 80% raw PUT", get(w1, "vecfs"), get("raw put MiB/s", "s3"), 0.8)
    check("seq write >= 2x s3fs", get(w1, "vecfs"), get(w1, "s3fs"), 2)
    check("cold seq read >= 80% raw GET", get(c1, "vecfs"), get("raw get MiB/s", "s3"), 0.8)
    check("cold seq read >= 3x s3fs", get(c1, "vecfs"), get(c1, "s3fs"), 3)
    for phase in ("warm", "local"):
        check(f"{phase} seq read >= 50% local disk", get(f"{phase} seq read 1 job MiB/s", "vecfs"),
              get(f"{phase} seq read 1 job MiB/s", "local"), 0.5)
        check(f"{phase} segment load >= 70% local disk", get(f"{phase} segment load MiB/s", "vecfs"),
              get(f"{phase} segment load MiB/s", "local"), 0.7)
    for fig in figures:
        if fig.startswith("mdtest"):
            check(f"{fig} >= 10x s3fs", get(fig, "vecfs"), get(fig, "s3fs"), 10)
            check(f"{fig} >= rclone", get(fig, "vecfs"), get(fig, "rclone"), 1)
    rss = get("daemon peak RSS MiB (after writes)", "vecfs")
    if rss is not None:
        ok = rss <= a.rss_limit_mib
        checks.append(("RSS during writes <= buffer + mem cache + 100 MiB",
                       "met" if ok else "MISSED", f"{rss:.0f} vs {a.rss_limit_mib:.0f} MiB"))
    print()
    for name, verdict, detail in checks:
        print(f"{verdict:>12}  {name}  ({detail})" if detail else f"{verdict:>12}  {name}")


if __name__ == "__main__":
    main()
