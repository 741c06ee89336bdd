#!/usr/bin/env bash
# Write-back (issue 10) side by side: what a writer waits for when it writes
# one Milvus-sized segment (52 MB, 1 MiB writes) and closes it, on
#   local         the local disk (close only: the data is in the page cache)
#   local-fsync   the local disk, fsync before close (durable on this disk)
#   vecfs         vecfs over moto's S3 server (close = stored and committed)
#   vecfs-wb      vecfs --writeback over the same server (close = staged
#                 durably in the cache directory; committed in the background)
# Each vecfs target has its own freshly formatted volume and empty cache.
# Per target: FILES segments, each timed from open to close returning
# (median and p90, ms) and the whole run's MB/s; for vecfs-wb also how long
# after the last close the staging area was empty (everything committed),
# which is what other nodes wait for.
#
# Usage: scripts/bench-writeback.sh   Env: FILES (8), SEG_MB (52)
set -euo pipefail
cd "$(dirname "$0")/.."
files=${FILES:-8}
seg_mb=${SEG_MB:-52}
WORK_PREFIX=vecfs-wb BUCKETS="bench-vecfs bench-vecfs-wb" source scripts/bench-servers.sh

mount_target() { # NAME DB [mount args...]
  local t=$1 db=$2; shift 2
  local meta=redis://127.0.0.1:$rport/$db
  mkdir -p "$work/mnt-$t"
  "$vecfs" format "$meta" "$t" --storage s3 --bucket "$endpoint/bench-$t" >/dev/null
  "$vecfs" mount "$meta" "$work/mnt-$t" -d --cache-dir "$work/cache-$t" --log "$work/$t.log" "$@" >/dev/null
}
mkdir -p "$work/mnt-local" "$work/mnt-local-fsync"
mount_target vecfs 1
mount_target vecfs-wb 2 --writeback

echo "vecfs $(sha256sum "$vecfs" | cut -c1-12), $files segments of $seg_mb MB each, 1 MiB writes"
python3 - "$work" "$files" "$seg_mb" <<'PY'
import os, statistics, sys, time
work, files, seg_mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size = seg_mb * 1000 * 1000
buf = os.urandom(1 << 20)

def staged(cache):
    n = 0
    for root, _, names in os.walk(cache):
        if os.path.basename(root) == "groups" and "staging" in root:
            n += len([x for x in names if not x.startswith(".")])
    return n

rows = []
for target, fsync in [("local", False), ("local-fsync", True), ("vecfs", False), ("vecfs-wb", False)]:
    d = os.path.join(work, "mnt-" + target)
    times = []
    t_all = time.perf_counter()
    for i in range(files):
        os.system("sync; echo 1 > /proc/sys/vm/drop_caches")
        t0 = time.perf_counter()
        fd = os.open(os.path.join(d, f"seg{i}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        left = size
        while left:
            left -= os.write(fd, buf[: min(left, len(buf))])
        if fsync:
            os.fsync(fd)
        os.close(fd)
        times.append((time.perf_counter() - t0) * 1000)
    wall = sum(times) / 1000
    committed = "-"
    if target == "vecfs-wb":
        t0 = time.perf_counter()
        while staged(os.path.join(work, "cache-" + target)):
            time.sleep(0.01)
        committed = "%.0f" % ((time.perf_counter() - t0) * 1000)
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    rows.append((target, statistics.median(times), p90, files * size / 1e6 / wall, committed))
    print(f"{target}: " + " ".join("%.0f" % t for t in times), "ms", file=sys.stderr)

head = ("target", "write+close median ms", "p90 ms", "MB/s", "committed after last close ms")
w = [max(len(str(x)) for x in col) for col in zip(head, *[(r[0], "%.0f" % r[1], "%.0f" % r[2], "%.0f" % r[3], r[4]) for r in rows])]
print("| " + " | ".join(h.ljust(x) for h, x in zip(head, w)) + " |")
print("|" + "|".join("-" * (x + 2) for x in w) + "|")
for r in rows:
    cells = (r[0], "%.0f" % r[1], "%.0f" % r[2], "%.0f" % r[3], r[4])
    print("| " + " | ".join(c.ljust(x) if i == 0 else c.rjust(x) for i, (c, x) in enumerate(zip(cells, w))) + " |")
PY
# every segment reads back the same on both vecfs targets and the local disk
for i in $(seq 0 $((files - 1))); do
  a=$(sha256sum <"$work/mnt-local/seg$i") b=$(sha256sum <"$work/mnt-vecfs/seg$i") c=$(sha256sum <"$work/mnt-vecfs-wb/seg$i")
  [[ $a == "$b" && $a == "$c" ]] || { echo "seg$i differs between targets" >&2; exit 1; }
done
echo "all segments read back identically on every target"
"$vecfs" umount "$work/mnt-vecfs" >/dev/null
"$vecfs" umount "$work/mnt-vecfs-wb" >/dev/null
