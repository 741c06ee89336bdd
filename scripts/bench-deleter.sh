#!/usr/bin/env bash
# Deleter throughput (issue 10): how many deleted files per second one
# read-write mount frees, on the local file store and on moto's S3 server
# (loopback), for small files (one object each) and multi-block files.
#
# Per case: a fresh volume (--trash-days 0) is mounted with a long
# --delete-delay, N files are written and removed (so they queue up in
# `delfiles` and nothing is deleted yet), the mount is unmounted and every
# queued entry is made due at once (its score set to 0 in Redis). Then a
# mount with --delete-delay 0 is started and the clock runs from just
# before the mount command until the queue is empty: mount start-up is
# counted against the deleter, so the figure is a lower bound. The store is
# then checked to hold no object of the removed files.
#
# Usage: scripts/bench-deleter.sh
# Env: VECFS (binary; default: this tree's release build, built if missing),
# SMALL (files of 64 KiB on the file store: 10000), MULTI (files of 256 KiB
# in 64 KiB blocks, 4 objects each, on the file store: 2000), S3_SMALL
# (2000), S3_MULTI (1000), TIMEOUT (seconds to wait for an empty queue: 600).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${VECFS:-} ]]; then
  cargo build --release --quiet
  VECFS=$PWD/target/release/vecfs
fi
small=${SMALL:-10000} multi=${MULTI:-2000}
s3_small=${S3_SMALL:-2000} s3_multi=${S3_MULTI:-1000}
timeout=${TIMEOUT:-600}

work=$(mktemp -d /tmp/vecfs-deleter.XXXX)
pids=()
cleanup() {
  for m in "$work"/mnt*; do umount -l "$m" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port) sport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --dir "$work" --daemonize no >/dev/null &
pids+=($!)
moto_server -H 127.0.0.1 -p "$sport" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 300); do
  (echo >/dev/tcp/127.0.0.1/$sport) 2>/dev/null && (echo >/dev/tcp/127.0.0.1/$rport) 2>/dev/null && break
  sleep 0.1
done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
rcli() { redis-cli -p "$rport" "$@"; }

# Objects in a case's bucket (a directory, or a bucket on moto).
count_objects() {
  if [[ $1 == file ]]; then
    find "$2" -type f | wc -l
  else
    python3 - "$2" <<'EOF'
import sys, boto3
endpoint, bucket = sys.argv[1].rsplit("/", 1)
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
print(sum(p.get("KeyCount", 0) for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)))
EOF
  fi
}

db=0
# case NAME STORAGE FILES FILE_KIB BLOCK_SIZE
run_case() {
  local name=$1 storage=$2 n=$3 kib=$4 bs=$5
  db=$((db + 1))
  local url=redis://127.0.0.1:$rport/$db bucket
  if [[ $storage == file ]]; then
    bucket=$work/objects-$db
  else
    bucket=http://127.0.0.1:$sport/deleter-$db
    python3 scripts/mkbucket.py s3 "$bucket"
  fi
  "$VECFS" format "$url" vol --storage "$storage" --bucket "$bucket" --trash-days 0 \
    --block-size "$bs" >/dev/null
  local mnt=$work/mnt-$db
  mkdir -p "$mnt"
  "$VECFS" mount -d "$url" "$mnt" --delete-delay 86400 --metrics none \
    --cache-dir "$work/cache-$db" --log "$work/vecfs-$db.log" >/dev/null
  python3 - "$mnt" "$n" "$kib" <<'EOF'
import os, sys
mnt, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
buf = os.urandom(kib << 10)
d = os.path.join(mnt, "d")
os.mkdir(d)
for i in range(n):
    with open(os.path.join(d, str(i)), "wb") as f:
        f.write(buf[i % 64:] + buf[:i % 64])
EOF
  local objects
  objects=$(count_objects "$storage" "$bucket")
  rm -rf "$mnt/d"
  "$VECFS" umount "$mnt" >/dev/null
  local queued
  queued=$(rcli -n "$db" ZCARD '{vol}delfiles')
  [[ $queued == "$n" ]] || { echo "$name: $queued files queued, expected $n" >&2; exit 1; }
  rcli -n "$db" EVAL "for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do redis.call('ZADD', KEYS[1], 0, m) end return 0" 1 '{vol}delfiles' >/dev/null
  local t0 t1 left
  t0=$(date +%s.%N)
  "$VECFS" mount -d "$url" "$mnt" --delete-delay 0 --metrics none \
    --cache-dir "$work/cache-$db" --log "$work/vecfs-$db.log" >/dev/null
  local deadline=$((SECONDS + timeout))
  while :; do
    left=$(rcli -n "$db" ZCARD '{vol}delfiles')
    [[ $left == 0 ]] && break
    ((SECONDS < deadline)) || { echo "$name: $left files still queued after ${timeout}s" >&2; exit 1; }
    sleep 0.02
  done
  t1=$(date +%s.%N)
  local rest
  rest=$(count_objects "$storage" "$bucket")
  "$VECFS" umount "$mnt" >/dev/null
  python3 -c "import sys; n,t=int(sys.argv[1]),float(sys.argv[3])-float(sys.argv[2]); print(f'| {sys.argv[4]:<34} | {n:>6} | {sys.argv[5]:>7} | {t:>7.2f} | {n/t:>9.0f} | {sys.argv[6]:>6} |')" \
    "$n" "$t0" "$t1" "$name" "$objects" "$rest"
}

echo "binary: $VECFS (sha256 $(sha256sum "$VECFS" | cut -c1-12))"
echo "| case                               |  files | objects |       s |  files/s | left |"
echo "| ---------------------------------- | ------ | ------- | ------- | -------- | ---- |"
run_case "file store, 64 KiB files" file "$small" 64 4M
run_case "file store, 256 KiB files (4 blocks)" file "$multi" 256 64K
run_case "moto S3, 64 KiB files" s3 "$s3_small" 64 4M
run_case "moto S3, 256 KiB files (4 blocks)" s3 "$s3_multi" 256 64K
