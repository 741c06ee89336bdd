#!/usr/bin/env bash
# Metadata at kernel speed (issue 13): mdtest-style create/stat/restat/read/
# remove of FILES files of SIZE bytes (scripts/mdtest.py --restat; SIZE 0 is
# mdtest's own default, -w 0) on the local disk,
# on vecfs with its default TTLs (30 s, kept coherent by change events) and
# on vecfs with the former 1 s TTLs, side by side in one run; then a reader
# node's view: files another mount created, stat'ed twice through a second
# mount (first pass: one lookup each; second pass 2 s later: the kernel's
# cache with 30 s TTLs, the daemon again with 1 s TTLs).
#
# Usage: scripts/bench-mdstat.sh [BIN]   (default: target/release/vecfs)
# Env: FILES (10000), PROCS (1), SIZE (4096).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
[[ -n $bin ]] || { cargo build --release --quiet; bin=$PWD/target/release/vecfs; }
files=${FILES:-10000}; procs=${PROCS:-1}; size=${SIZE:-4096}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port)
w=$(mktemp -d /var/tmp/vecfs-mdstat.XXXX)
pids=()
cleanup() {
  for m in "$w"/mnt*; do fusermount -uz "$m" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$w"
}
trap cleanup EXIT
mkdir -p "$w/local" "$w/store" "$w/mnt30" "$w/mnt1" "$w/mntB" "$w/mntB1"
redis-server --port "$rport" --bind 127.0.0.1 --save "" --dir "$w" --daemonize no >/dev/null & pids+=($!)
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
meta=redis://127.0.0.1:$rport/1
"$bin" format "$meta" mdstat --storage file --bucket "$w/store" --trash-days 0 >/dev/null
mnt() { "$bin" mount "$meta" "$w/$1" -d --cache-dir memory --log "$w/$1.log" "${@:2}" >/dev/null; }
mnt mnt30
mnt mnt1 --attr-cache 1 --entry-cache 1 --dir-entry-cache 1
mnt mntB
mnt mntB1 --attr-cache 1 --entry-cache 1 --dir-entry-cache 1
declare -A r
run() {
  local t=$1 dir=$2
  while read -r _ phase v; do r[$t,$phase]=$v; done < <(python3 scripts/mdtest.py "$dir" --files "$files" --procs "$procs" --size "$size" --restat)
}
run local "$w/local"
run vecfs "$w/mnt30"
run vecfs-1s "$w/mnt1"
# A reader node: files made through one mount, stat'ed through another.
mkdir "$w/mnt30/reader"
python3 - "$w/mnt30/reader" "$files" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(b"x" * 4096)
PY
# Two passes with a pause between them, as a reader stats its segments
# again a while later.
reader() {
  python3 - "$1/reader" "$files" <<'PY'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
names = [os.path.join(d, f"f{i}") for i in range(n)]
out = []
for i in range(2):
    if i:
        time.sleep(2)
    t = time.perf_counter()
    for p in names:
        os.stat(p)
    out.append(n / (time.perf_counter() - t))
print(f"{out[0]:.1f} {out[1]:.1f}")
PY
}
read -r s1 s2 < <(reader "$w/mntB")
read -r o1 o2 < <(reader "$w/mntB1")
printf '%-22s %12s %12s %12s %10s %10s\n' "ops/s ($files files, $procs proc)" local vecfs vecfs-1s "vecfs/local" "1s/local"
for ph in create stat restat read remove; do
  l=${r[local,$ph]}; v=${r[vecfs,$ph]}; o=${r[vecfs-1s,$ph]}
  printf '%-22s %12.0f %12.0f %12.0f %9.2fx %9.2fx\n' "$ph" "$l" "$v" "$o" \
    "$(echo "$v / $l" | bc -l)" "$(echo "$o / $l" | bc -l)"
done
printf '%-22s %12s %12.0f %12.0f\n' "reader stat pass 1" - "$s1" "$o1"
printf '%-22s %12s %12.0f %12.0f\n' "reader stat 2 s later" - "$s2" "$o2"
printf '{"files":%d,"procs":%d,"local":{"stat":%s,"restat":%s},"vecfs":{"stat":%s,"restat":%s},"vecfs_1s":{"stat":%s,"restat":%s},"reader":{"pass1":%s,"pass2":%s},"reader_1s":{"pass1":%s,"pass2":%s}}\n' \
  "$files" "$procs" "${r[local,stat]}" "${r[local,restat]}" "${r[vecfs,stat]}" "${r[vecfs,restat]}" \
  "${r[vecfs-1s,stat]}" "${r[vecfs-1s,restat]}" "$s1" "$s2" "$o1" "$o2"
