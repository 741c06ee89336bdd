#!/usr/bin/env bash
# Cold random reads side by side (issue 11, item 4): fio randread 4 KiB,
# 1 job, on a 1 GiB file, each target freshly mounted with empty caches and
# the kernel's caches dropped, against one moto S3 server on loopback.
# Per target: IOPS, MiB the process read, MiB that came over loopback
# (/proc/net/dev "lo" receive bytes: the store's answers, plus a little
# Redis), the same from vecfs's own metrics, and the daemon's peak RSS.
#
# Then (PHASES contains seq) a cold sequential read of the same file per
# vecfs target (fio read 1 MiB, 1 job) with the daemon's peak RSS, next to
# the server's raw parallel GET throughput (scripts/s3raw.py), and once
# more from the disk cache it filled (fresh daemon, kernel caches dropped)
# next to the local disk.
#
# Usage: scripts/bench-random.sh [TARGETS...]   (default: vecfs rclone)
#   TARGETS: vecfs, rclone, and vecfs-old when VECFS_OLD names another
#   vecfs binary (e.g. one built from an older commit) to compare with.
# Env: SECONDS_RUN (30), SIZE_MIB (1024), PHASES ("rand seq"), REDIS_PORT / S3_PORT /
# METRICS_PORT (free ports when unset), VECFS_ARGS (extra mount options
# for the vecfs targets, e.g. "--cache-dir memory").
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
((${#targets[@]})) || targets=(vecfs rclone)
secs=${SECONDS_RUN:-30}
size=${SIZE_MIB:-1024}
phases=${PHASES:-rand seq}
cargo build --release --quiet
vecfs=$PWD/target/release/vecfs
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=${REDIS_PORT:-$(free_port)}
sport=${S3_PORT:-$(free_port)}
mport=${METRICS_PORT:-$(free_port)}
work=$(mktemp -d /tmp/vecfs-random.XXXX)
pids=()
cleanup() {
  for m in "$work"/mnt-*; do umount -l "$m" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
redis-server --port "$rport" --bind 127.0.0.1 --save "" --dir "$work" --daemonize no >/dev/null &
pids+=($!)
moto_server -H 127.0.0.1 -p "$sport" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 300); do (echo > /dev/tcp/127.0.0.1/$sport) 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
endpoint=http://127.0.0.1:$sport
for b in vecfs rclone; do python3 scripts/mkbucket.py s3 "$endpoint/$b"; done
meta=redis://127.0.0.1:$rport/1
"$vecfs" format "$meta" bench --storage s3 --bucket "$endpoint/vecfs" >/dev/null

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
lo_rx() { awk '$1 == "lo:" {print $2}' /proc/net/dev; }
metric() { curl -s "http://127.0.0.1:$mport/metrics" | awk -v n="$1" '$1 == n {print $2}'; }
wait_mounted() {
  for _ in $(seq 300); do grep -qs " $1 " /proc/mounts && return 0; sleep 0.1; done
  echo "$1 did not mount" >&2; return 1
}
bin_of() { if [[ $1 == vecfs-old ]]; then echo "${VECFS_OLD:?VECFS_OLD must name the old binary}"; else echo "$vecfs"; fi; }

mount_target() {
  local t=$1 m=$work/mnt-$1
  mkdir -p "$m"
  case $t in
    vecfs|vecfs-old)
      [[ ${2:-} == keep ]] || rm -rf "$work/cache-$t"
      local cache=(--cache-dir "$work/cache-$t")
      [[ ${VECFS_ARGS:-} == *--cache-dir* ]] && cache=()
      # shellcheck disable=SC2086 # VECFS_ARGS is a list of options
      "$(bin_of "$t")" mount "$meta" "$m" -d "${cache[@]}" --log "$work/$t.log" \
        --metrics "127.0.0.1:$mport" ${VECFS_ARGS:-} >/dev/null ;;
    rclone)
      rm -rf "$work/rclone-cache"
      env -u AWS_CA_BUNDLE rclone mount ":s3,provider=Other,endpoint='$endpoint',access_key_id=bench,secret_access_key=bench:rclone" \
        "$m" --vfs-cache-mode full --cache-dir "$work/rclone-cache" --daemon
      wait_mounted "$m" ;;
  esac
}
umount_target() {
  local m=$work/mnt-$1
  grep -qs " $m " /proc/mounts || return 0
  case $1 in
    vecfs|vecfs-old) "$(bin_of "$1")" umount "$m" >/dev/null ;;
    *) fusermount3 -u "$m" 2>/dev/null || umount "$m" ;;
  esac
}
daemon_pid() {
  case $1 in
    vecfs|vecfs-old) pgrep -f "mount @env $work/mnt-$1" | head -1 ;;
    rclone) pgrep -f "rclone mount .* $work/mnt-rclone" | head -1 ;;
  esac
}

# The file: the same random bytes written once through vecfs (both vecfs
# binaries read that volume) and uploaded as one object for rclone.
dd if=/dev/urandom of="$work/rand.bin" bs=1M count="$size" status=none
mount_target vecfs
cp "$work/rand.bin" "$work/mnt-vecfs/rand.bin"
umount_target vecfs
[[ " ${targets[*]} " == *" rclone "* ]] && python3 - "$endpoint" "$work/rand.bin" <<'PY'
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
s3.upload_file(sys.argv[2], "rclone", "rand.bin")
PY

[[ $phases == *rand* ]] && printf '%-10s %8s %10s %12s %14s %10s\n' target IOPS "read MiB" "lo rx MiB" "vecfs GET MiB" "RSS MiB"
for t in "${targets[@]}"; do
  [[ $phases == *rand* ]] || break
  mount_target "$t"
  drop_caches
  rx0=$(lo_rx); got0=0
  [[ $t == vecfs* ]] && got0=$(metric vecfs_object_get_bytes_total)
  out=$(cd "$work/mnt-$t" && fio --output-format=json --name=rand --filename=rand.bin --size="${size}M" \
    --rw=randread --bs=4k --norandommap --time_based --runtime="$secs" --numjobs=1)
  rx1=$(lo_rx)
  got="-"
  [[ $t == vecfs* ]] && got=$(( ($(metric vecfs_object_get_bytes_total) - got0) >> 20 ))
  rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/"$(daemon_pid "$t")"/status)
  read -r iops readmib < <(python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]["read"]
print("%.0f %.1f" % (j["iops"], j["io_bytes"] / 2**20))' <<<"$out")
  printf '%-10s %8s %10s %12s %14s %10s\n' "$t" "$iops" "$readmib" "$(( (rx1 - rx0) >> 20 ))" "$got" "$rss"
  umount_target "$t"
done

[[ $phases == *seq* ]] || exit 0
echo
python3 scripts/s3raw.py "$endpoint" rclone --total-mib 512 | sed 's/^/server /'
seqread() { # DIR: fio read 1 MiB of DIR/rand.bin, prints MiB/s
  (cd "$1" && fio --output-format=json --name=seq --filename=rand.bin --size="${size}M" \
    --rw=read --bs=1M --numjobs=1) |
    python3 -c 'import json, sys; print("%.0f" % (json.load(sys.stdin)["jobs"][0]["read"]["bw"] / 1024))'
}
drop_caches
echo "local disk seq MiB/s (page cache dropped): $(seqread "$work")"
printf '%-10s %12s %14s %10s %18s\n' target "seq MiB/s" "vecfs GET MiB" "RSS MiB" "disk-cache MiB/s"
for t in "${targets[@]}"; do
  [[ $t == vecfs* ]] || continue
  mount_target "$t"
  drop_caches
  got0=$(metric vecfs_object_get_bytes_total)
  bw=$(seqread "$work/mnt-$t")
  got=$(( ($(metric vecfs_object_get_bytes_total) - got0) >> 20 ))
  rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/"$(daemon_pid "$t")"/status)
  umount_target "$t"
  # Again from this node's disk cache, in a fresh daemon (no memory cache).
  local_bw=-
  if [[ ${VECFS_ARGS:-} != *--cache-dir* ]]; then
    mount_target "$t" keep
    drop_caches
    local_bw=$(seqread "$work/mnt-$t")
    umount_target "$t"
  fi
  printf '%-10s %12s %14s %10s %18s\n' "$t" "$bw" "$got" "$rss" "$local_bw"
done
