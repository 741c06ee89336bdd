#!/usr/bin/env bash
# What warm-on-commit costs and buys, side by side in one run: writer mount
# A and read-only reader mount B (separate vecfs processes) over one
# redis-server and one moto S3 server on loopback. A writes FILES segment
# files of 51,200,008 bytes (one write, close); SETTLE seconds later (the
# reader's metadata delay) B reads each whole. Modes per round:
#   cold   B without --warm-on-commit: B's read fetches from the store
#   warm   B with --warm-on-commit '*.rv' --warm-page-cache 1024
#   local  the same files on the local disk with a warm page cache
# Per mode: A's write+close median, time from A's close until B had warmed
# the file (warm), B's read time (median, p95), bytes B's daemon served
# and store GETs during B's reads, B daemon CPU seconds and peak RSS.
#
# Usage: scripts/bench-warm.sh   Env: FILES (8), SETTLE (1.5)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK_PREFIX=vecfs-warm BUCKETS="vecfs" source scripts/bench-servers.sh
meta=redis://127.0.0.1:$rport/1
"$vecfs" format "$meta" warm --storage s3 --bucket "$endpoint/vecfs" >/dev/null
mkdir -p "$work/local"
mport=$(free_port)

run_mode() { # MODE
  local mode=$1 a=$work/mnt-a-$1 b=$work/mnt-b-$1 warm=()
  mkdir -p "$a" "$b"
  [[ $mode == warm ]] && warm=(--warm-on-commit '*.rv' --warm-page-cache 1024)
  "$vecfs" mount "$meta" "$a" -d --cache-dir "$work/ca-$mode" --metrics none --log "$work/a-$mode.log" >/dev/null
  "$vecfs" mount "$meta" "$b" -d --cache-dir "$work/cb-$mode" --metrics "127.0.0.1:$mport" \
    --log "$work/b-$mode.log" --read-only "${warm[@]}" >/dev/null
  local bpid
  bpid=$(pgrep -f "vecfs mount .*$b" | head -1)
  python3 - "$mode" "$a/$mode" "$b/$mode" "$bpid" "$mport" "${FILES:-8}" "${SETTLE:-1.5}" <<'PY'
import os, sys, time, json, urllib.request
mode, adir, bdir, bpid, mport, files, settle = sys.argv[1:8]
files, settle = int(files), float(settle)
def metric(n):
    t = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics").read().decode()
    for l in t.splitlines():
        if l.startswith(n + " "): return int(l.split()[1])
    return 0
def cpu():
    f = open(f"/proc/{bpid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def hwm():
    for l in open(f"/proc/{bpid}/status"):
        if l.startswith("VmHWM"): return int(l.split()[1]) // 1024
os.makedirs(adir, exist_ok=True)
c0 = cpu(); closes, warmed, reads, served, gets = [], [], [], 0, 0
for i in range(files):
    data = os.urandom(51200008)
    w0 = metric("vecfs_warm_files_total")
    t0 = time.time()
    with open(f"{adir}/{i}.rv", "wb") as f: f.write(data)
    t1 = time.time(); closes.append(t1 - t0)
    if mode == "warm":
        while metric("vecfs_warm_files_total") == w0 and time.time() - t1 < 30: time.sleep(0.002)
        warmed.append(time.time() - t1)
    time.sleep(max(0.0, settle - (time.time() - t1)))
    r0, g0 = metric("vecfs_read_bytes_total"), metric("vecfs_object_get_total") + metric("vecfs_object_range_get_total")
    t = time.time(); got = open(f"{bdir}/{i}.rv", "rb").read(); reads.append(time.time() - t)
    assert got == data, f"{mode}: {i}.rv read back wrong"
    served += metric("vecfs_read_bytes_total") - r0
    gets += metric("vecfs_object_get_total") + metric("vecfs_object_range_get_total") - g0
med = lambda v: sorted(v)[len(v) // 2] if v else 0
p95 = lambda v: sorted(v)[min(len(v) - 1, int(len(v) * 0.95))] if v else 0
r = dict(mode=mode, files=files, writer_close_ms=round(med(closes) * 1e3),
         warmed_after_close_ms=round(med(warmed) * 1e3) if warmed else None,
         read_ms_p50=round(med(reads) * 1e3, 1), read_ms_p95=round(p95(reads) * 1e3, 1),
         daemon_served_mib=round(served / 2**20, 1), store_gets_during_reads=gets,
         reader_cpu_s=round(cpu() - c0, 2), reader_peak_rss_mib=hwm())
print(json.dumps(r))
PY
  umount "$b" "$a"
}

run_mode cold
run_mode warm
python3 - "$work/local" "${FILES:-8}" <<'PY'
import os, sys, time, json
d, files = sys.argv[1], int(sys.argv[2]); reads = []
for i in range(files):
    data = os.urandom(51200008)
    with open(f"{d}/{i}.rv", "wb") as f: f.write(data)
    t = time.time(); got = open(f"{d}/{i}.rv", "rb").read(); reads.append(time.time() - t)
    assert got == data
reads.sort()
print(json.dumps(dict(mode="local", files=files, read_ms_p50=round(reads[len(reads)//2] * 1e3, 1),
                      read_ms_p95=round(reads[min(len(reads)-1, int(len(reads)*0.95))] * 1e3, 1))))
PY
