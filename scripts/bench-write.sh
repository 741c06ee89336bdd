#!/usr/bin/env bash
# The write path side by side, in one run on this machine: the local disk
# (the kernel ceiling) and one or more vecfs binaries (e.g. the code before
# and after a rewrite of the write path, issue 9), each binary on its own
# freshly formatted volume (its own bucket on moto's S3 server on loopback,
# its own Redis database), mounted with default options and its own empty
# cache directory. Prints one table (each figure's median, every repetition
# in brackets, and the last binary's ratio to the first) and one JSON line.
#
# Figures per target and repetition:
#   fio     seq write 1 job (1 GiB), 4 jobs x 256 MiB, 16 segment files x
#           64 MiB (bs=1M; durable: end_fsync / fsync on close), MiB/s
#   mdtest  create (open, write 4 KiB, close), stat, read, remove of 10,000
#           files with 1 and with 2 processes (scripts/mdtest.py), ops/s
#   append  2,000 x (open O_APPEND, write 32 B, close) on one file,
#           records/s; the file is then checked (size and every record)
#   RSS     each vecfs daemon's peak RSS (VmHWM) at the end
# Every repetition formats each volume afresh; the order of the targets
# alternates between repetitions (forward, reversed, ...), so that neither
# binary always runs first on a noisy machine.
#
# Usage: VECFS_BINS="old=/tmp/vecfs-old new=/tmp/vecfs-new" scripts/bench-write.sh
# Env: VECFS_BINS (NAME=PATH ..., names [a-z0-9-]; default: this tree's
# release build as "vecfs"), REPS (3, at least 2), FIO_SIZE_MIB (1024: the
# 1-job file; 4 jobs and 16 segment files share the same total),
# MDTEST_FILES (10000), APPEND_RECORDS (2000).
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${REPS:-3}
fio_mib=${FIO_SIZE_MIB:-1024}
mdfiles=${MDTEST_FILES:-10000}
appends=${APPEND_RECORDS:-2000}
((reps >= 2)) || { echo "REPS must be at least 2" >&2; exit 1; }
((fio_mib % 16 == 0)) || { echo "FIO_SIZE_MIB must be a multiple of 16" >&2; exit 1; }

# NAME=PATH pairs; the default binary's path is known once bench-servers.sh built it
read -ra specs <<<"${VECFS_BINS:-vecfs=@built}"
names=(); declare -A bin
for s in "${specs[@]}"; do
  n=${s%%=*} p=${s#*=}
  [[ $s == *=* && $n =~ ^[a-z0-9][a-z0-9-]*$ && $n != local ]] \
    || { echo "VECFS_BINS: bad entry '$s' (want NAME=PATH, NAME in [a-z0-9-], not 'local')" >&2; exit 1; }
  [[ -n ${bin[$n]+x} ]] && { echo "VECFS_BINS: '$n' given twice" >&2; exit 1; }
  names+=("$n"); bin[$n]=$p
done

WORK_PREFIX=vecfs-write BUCKETS="${names[*]/#/bench-}" source scripts/bench-servers.sh
for n in "${names[@]}"; do
  [[ ${bin[$n]} == @built ]] && bin[$n]=$vecfs
  [[ -x ${bin[$n]} ]] || { echo "${bin[$n]} is not an executable" >&2; exit 1; }
done
declare -A db
i=1; for n in "${names[@]}"; do db[$n]=$i; i=$((i + 1)); done
results=$work/results.tsv
: >"$results"
targets=(local "${names[@]}")

echo "binaries:"
for n in "${names[@]}"; do echo "  $n = ${bin[$n]} (sha256 $(sha256sum "${bin[$n]}" | cut -c1-12))"; done
echo "fio ${fio_mib} MiB per job set, mdtest $mdfiles files, $appends appends, $reps repetitions"

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" | tee -a "$results"; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
daemon_pid() { pgrep -f -- "mount @env $work/mnt-$1( |\$)" | head -1; }

# wipe_volume NAME: the volume's Redis database and bucket emptied
wipe_volume() {
  redis-cli -p "$rport" -n "${db[$1]}" flushdb >/dev/null
  python3 - "$endpoint" "$1" <<'PY'
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench-" + sys.argv[2]):
    keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
    if keys:
        s3.delete_objects(Bucket="bench-" + sys.argv[2], Delete={"Objects": keys, "Quiet": True})
PY
}

# setup_target T: local: an empty directory; a binary: a fresh volume, mounted
setup_target() {
  local t=$1 m=$work/mnt-$1
  mkdir -p "$m"
  [[ $t == local ]] && return 0
  local meta=redis://127.0.0.1:$rport/${db[$t]}
  wipe_volume "$t"
  rm -rf "$work/cache-$t"
  "${bin[$t]}" format "$meta" "$t" --storage s3 --bucket "$endpoint/bench-$t" >/dev/null
  "${bin[$t]}" mount "$meta" "$m" -d --cache-dir "$work/cache-$t" --log "$work/$t.log" >/dev/null
}
teardown_target() {
  local t=$1 m=$work/mnt-$1
  if [[ $t == local ]]; then rm -rf "${m:?}"/*; return 0; fi
  "${bin[$t]}" umount "$m" >/dev/null
  wipe_volume "$t"
}

# fio_write REP T FIGURE [fio args...]: records the write bandwidth in MiB/s
fio_write() {
  local rep=$1 t=$2 fig=$3; shift 3
  local out t0 v
  t0=$(date +%s.%N)
  out=$(cd "$work/mnt-$t" && fio --output-format=json --fallocate=none --group_reporting --rw=write "$@") \
    || { record "$rep" "$t" "$fig" failed; return 0; }
  # fio's bandwidth (its runtime includes the end_fsync / fsync on close);
  # the wall time of the whole fio run goes to stderr as a cross-check
  v=$(python3 -c '
import json, sys
w = json.load(sys.stdin)["jobs"][0]["write"]
print("%.1f" % (w["bw"] / 1024))
print("fio: %d MiB in %.2f s (fio runtime), %.2f s wall" % (w["io_bytes"] >> 20,
      w["runtime"] / 1000, float(sys.argv[1])), file=sys.stderr)' "$(echo "$(date +%s.%N) - $t0" | bc)" <<<"$out") \
    || v=failed
  record "$rep" "$t" "$fig" "$v"
}

# append_run DIR N: N x (open O_APPEND, write one 32-byte record, close);
# prints records/s, fails unless the file holds exactly the N records in order
append_run() {
  python3 - "$1/append.log" "$2" <<'PY'
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
for i in range(n):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, b"%031d\n" % i)
    os.close(fd)
dt = time.perf_counter() - t0
data = open(path, "rb").read()
want = b"".join(b"%031d\n" % i for i in range(n))
if data != want:
    sys.exit(f"append: file has {len(data)} bytes, want {len(want)}; records lost or out of order")
os.unlink(path)
print(f"{n / dt:.1f}")
PY
}

per=$((fio_mib / 16))
seq1=(--name=seq1 --filename=seq1 --bs=1M --size="${fio_mib}M" --end_fsync=1)
seq4=(--name=seq4 --bs=1M --size="$((fio_mib / 4))M" --numjobs=4 --end_fsync=1)
seg=(--name=seg --directory=seg --bs=1M --nrfiles=16 --filesize="${per}M" --size="${fio_mib}M"
     --file_service_type=sequential --openfiles=1 --fsync_on_close=1)

run_target() {
  local rep=$1 t=$2 m=$work/mnt-$2 v pid
  echo "== rep $rep: $t" >&2
  drop_caches
  setup_target "$t"
  mkdir -p "$m/seg"
  fio_write "$rep" "$t" "seq write 1 job MiB/s" "${seq1[@]}"
  fio_write "$rep" "$t" "seq write 4 jobs MiB/s" "${seq4[@]}"
  fio_write "$rep" "$t" "segment write MiB/s" "${seg[@]}"
  for p in 1 2; do
    if python3 scripts/mdtest.py "$m" --files "$mdfiles" --procs "$p" >"$work/mdtest.out"; then
      while read -r _ phase v; do record "$rep" "$t" "mdtest $p proc $phase /s" "$v"; done <"$work/mdtest.out"
    else
      for phase in create stat read remove; do record "$rep" "$t" "mdtest $p proc $phase /s" failed; done
    fi
  done
  v=$(append_run "$m" "$appends") || v=failed
  record "$rep" "$t" "append open+write 32 B+close /s" "$v"
  if [[ $t != local ]] && pid=$(daemon_pid "$t") && [[ -n $pid ]]; then
    record "$rep" "$t" "daemon peak RSS MiB" "$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/"$pid"/status)"
  fi
  teardown_target "$t"
}

start=$(date +%s)
for rep in $(seq "$reps"); do
  order=("${targets[@]}")
  if ((rep % 2 == 0)); then
    order=(); for ((i = ${#targets[@]} - 1; i >= 0; i--)); do order+=("${targets[i]}"); done
  fi
  echo "== rep $rep order: ${order[*]}"
  for t in "${order[@]}"; do run_target "$rep" "$t"; done
done
echo "== total $(($(date +%s) - start)) s"

python3 - "$results" "${targets[@]}" <<'PY'
import collections, json, statistics, sys
path, targets = sys.argv[1], sys.argv[2:]
runs = collections.defaultdict(lambda: collections.defaultdict(list))
figures = []
for line in open(path):
    rep, target, fig, value = line.rstrip("\n").split("\t")
    try:
        runs[fig][target].append(float(value))
    except ValueError:
        runs[fig][target].append(None)
    if fig not in figures:
        figures.append(fig)

def med(vs):
    vs = [v for v in vs if v is not None]
    return statistics.median(vs) if vs else None

def num(v):
    return "-" if v is None else f"{v:.1f}" if v < 100 else f"{v:.0f}"

bins = targets[1:]
a, b = (bins[0], bins[-1]) if len(bins) >= 2 else (None, None)
head = ["figure"] + targets + ([f"{b}/{a}"] if a else [])
rows, out = [], {}
for fig in figures:
    row, out[fig] = [fig], {}
    for t in targets:
        vs = runs[fig].get(t, [])
        m = med(vs)
        out[fig][t] = {"median": m, "runs": vs}
        row.append(f"{num(m)} [{' '.join(num(v) for v in vs)}]" if vs else "-")
    if a:
        ma, mb = out[fig][a]["median"], out[fig][b]["median"]
        r = mb / ma if ma and mb is not None else None
        out[fig][f"{b}/{a}"] = r
        row.append("-" if r is None else f"{r:.2f}x")
    rows.append(row)
widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
print("\nmedian [each repetition, in repetition order]")
for row in [head, ["-" * w for w in widths]] + rows:
    print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(row, widths))) + " |")
print(json.dumps({"bench": "write", "targets": targets, "figures": out}))
PY
