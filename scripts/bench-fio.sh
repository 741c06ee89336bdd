#!/usr/bin/env bash
# The side-by-side harness of issue 4, in one go on this machine: fio jobs
# and an mdtest-style metadata run on the local disk (the kernel ceiling),
# vecfs over moto's S3 server on loopback, and s3fs-fuse and rclone mount
# (--vfs-cache-mode full) over the same server, plus the server's raw
# parallel PUT/GET throughput. Prints one table with every figure and its
# ratios, and the vecfs daemon's peak RSS.
#
# Phases per target (files written once, then read):
#   write   seq 1 GiB 1 job; seq 4 jobs x 256 MiB; 16 segment files x 64 MiB
#           (bs=1M, durable: end_fsync / fsync on close)
#   cold    remount with empty caches + kernel caches dropped, before each
#           read job: seq read 1 job and 4 jobs, segment load (each 64 MiB
#           file read whole), random 4k reads for 15 s
#   local   kernel caches dropped, the file system's own cache kept
#   warm    everything kept (kernel page cache included)
#   mdtest  create/stat/read/remove of 4 KiB files, 1 and 2 processes
#
# Usage: scripts/bench-fio.sh [TARGETS...]   (default: local vecfs s3fs rclone)
# Env: MDTEST_FILES (10000), S3FS_MDTEST_FILES (1000: s3fs creates ~25
# files/s, 10,000 would take minutes), RANDREAD_SECONDS (15).
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
((${#targets[@]})) || targets=(local vecfs s3fs rclone)
mdfiles=${MDTEST_FILES:-10000}
s3fs_mdfiles=${S3FS_MDTEST_FILES:-1000}
rand_secs=${RANDREAD_SECONDS:-15}
WORK_PREFIX=vecfs-fio BUCKETS="vecfs s3fs rclone raw" source scripts/bench-servers.sh
results=$work/results.tsv
echo "bench:bench" > "$work/s3fs.passwd"; chmod 600 "$work/s3fs.passwd"
meta=redis://127.0.0.1:$rport/1
"$vecfs" format "$meta" bench --storage s3 --bucket "$endpoint/vecfs" >/dev/null

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" | tee -a "$results"; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
wait_mounted() {
  for _ in $(seq 200); do grep -qs " $1 " /proc/mounts && return 0; sleep 0.1; done
  echo "$1 did not mount" >&2; return 1
}
vecfs_pid() { pgrep -f "vecfs mount @env $work/mnt-vecfs" | head -1; }

# mount_target T: mounts T with empty caches (a remount when it is mounted)
mount_target() {
  local t=$1 m=$work/mnt-$1
  umount_target "$t"
  mkdir -p "$m"
  case $t in
    local) ;;
    vecfs)
      rm -rf "$work/vecfs-cache"
      "$vecfs" mount "$meta" "$m" -d --cache-dir "$work/vecfs-cache" --log "$work/vecfs.log" >/dev/null ;;
    s3fs)
      s3fs s3fs "$m" -o url="$endpoint" -o use_path_request_style -o passwd_file="$work/s3fs.passwd"
      wait_mounted "$m" ;;
    rclone)
      rm -rf "$work/rclone-cache"
      # the endpoint is quoted: a bare URL's colons would end the connection string
      env -u AWS_CA_BUNDLE rclone mount ":s3,provider=Other,endpoint='$endpoint',access_key_id=bench,secret_access_key=bench:rclone" \
        "$m" --vfs-cache-mode full --cache-dir "$work/rclone-cache" --daemon
      wait_mounted "$m" ;;
  esac
}
umount_target() {
  local m=$work/mnt-$1
  grep -qs " $m " /proc/mounts || return 0
  if [[ $1 == vecfs ]]; then "$vecfs" umount "$m" >/dev/null; else fusermount3 -u "$m" 2>/dev/null || umount "$m"; fi
}

# fio_job T FIGURE read|write bw|iops [fio args...]: runs fio in T's mount and
# records KEY (bw in MiB/s or iops) of the read or write side
fio_job() {
  local t=$1 fig=$2 side=$3 key=$4; shift 4
  local out
  out=$(cd "$work/mnt-$t" && fio --output-format=json --fallocate=none --group_reporting "$@") \
    || { record "$t" "$fig" "failed"; return 0; }
  record "$t" "$fig" "$(python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0][sys.argv[1]]
print(f"{j[sys.argv[2]] / 1024:.1f}" if sys.argv[2] == "bw" else f"{j[sys.argv[2]]:.0f}")
' "$side" "$key" <<<"$out")"
}

# wait_uploaded BUCKET: until every file the write jobs made is in BUCKET
wait_uploaded() {
  python3 - "$endpoint" "$1" <<'PY'
import sys, time, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
want = {"seq1": 1 << 30, **{f"seq4.{j}.0": 256 << 20 for j in range(4)},
        **{f"seg/seg.0.{i}": 64 << 20 for i in range(16)}}
deadline = time.time() + 600
while time.time() < deadline:
    have = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[2]):
        have.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    if all(have.get(k) == n for k, n in want.items()):
        sys.exit(0)
    time.sleep(1)
sys.exit("uploads did not finish within 10 minutes")
PY
}

seq1=(--name=seq1 --filename=seq1 --bs=1M --size=1G)
seq4=(--name=seq4 --bs=1M --size=256M --numjobs=4)
seg=(--name=seg --directory=seg --bs=1M --nrfiles=16 --filesize=64M --size=1G --file_service_type=sequential --openfiles=1)
rand=(--name=rand --filename=seq1 --size=1G --rw=randread --bs=4k --norandommap --time_based --runtime="$rand_secs")

read_phase() {
  local t=$1 phase=$2
  prep() { case $phase in cold) mount_target "$t"; drop_caches ;; local) drop_caches ;; esac; }
  prep; fio_job "$t" "$phase seq read 1 job MiB/s" read bw "${seq1[@]}" --rw=read
  prep; fio_job "$t" "$phase seq read 4 jobs MiB/s" read bw "${seq4[@]}" --rw=read
  prep; fio_job "$t" "$phase segment load MiB/s" read bw "${seg[@]}" --rw=read
  prep; fio_job "$t" "$phase rand 4k read IOPS" read iops "${rand[@]}"
}

python3 scripts/s3raw.py "$endpoint" raw | while read -r _ side v; do record s3 "raw $side MiB/s" "$v"; done

for t in "${targets[@]}"; do
  echo "== $t"
  mount_target "$t"
  mkdir -p "$work/mnt-$t/seg"
  fio_job "$t" "seq write 1 job MiB/s" write bw "${seq1[@]}" --rw=write --end_fsync=1
  fio_job "$t" "seq write 4 jobs MiB/s" write bw "${seq4[@]}" --rw=write --end_fsync=1
  if [[ $t == vecfs ]]; then
    record vecfs "daemon peak RSS MiB (after writes)" "$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/"$(vecfs_pid)"/status)"
  fi
  fio_job "$t" "segment write MiB/s" write bw "${seg[@]}" --rw=write --fsync_on_close=1
  # rclone uploads after close (write-back): its files reach S3 only later,
  # and a remount before that loses them
  [[ $t == rclone ]] && wait_uploaded rclone
  for phase in cold local warm; do read_phase "$t" "$phase"; done
  n=$mdfiles; [[ $t == s3fs ]] && n=$s3fs_mdfiles
  for p in 1 2; do
    python3 scripts/mdtest.py "$work/mnt-$t" --files "$n" --procs "$p" \
      | while read -r _ phase v; do record "$t" "mdtest $p proc $phase /s" "$v"; done
  done
  if [[ $t == vecfs ]]; then
    record vecfs "daemon peak RSS MiB (whole run)" "$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/"$(vecfs_pid)"/status)"
  fi
  rm -rf "${work:?}/mnt-$t/"seq* "$work/mnt-$t/seg"
  umount_target "$t"
done

python3 scripts/bench-table.py "$results"
