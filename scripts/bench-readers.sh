#!/usr/bin/env bash
# Many cold sequential readers at once (issue 11, item 3): N files of SIZE
# MiB (random bytes) written through a writer mount, then per binary a
# fresh reader mount (own disk cache, kernel caches dropped) where N `dd`
# processes read one file each at the same time. Prints aggregate MiB/s,
# the daemon's peak RSS (VmHWM) against --mem-cache-size + --buffer-size +
# 200 MiB, its CPU seconds and whole-object GETs; plus the server's raw
# parallel GET throughput (scripts/s3raw.py) in the same run.
#
# Usage: scripts/bench-readers.sh [BIN...]   (default: target/release/vecfs)
# Env: N (8), SIZE (256), MEM (512), BUF (300), ROUNDS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
bins=("$@")
((${#bins[@]})) || { cargo build --release --quiet; bins=("$PWD/target/release/vecfs"); }
n=${N:-8}; size=${SIZE:-256}; mem=${MEM:-512}; buf=${BUF:-300}; rounds=${ROUNDS:-2}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port); sport=$(free_port); mport=$(free_port)
w=$(mktemp -d /tmp/vecfs-readers.XXXX)
pids=()
cleanup() {
  for m in "$w"/mnt*; do fusermount -uz "$m" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$w"
}
trap cleanup EXIT
mkdir -p "$w/mntA" "$w/mntB"
redis-server --port "$rport" --bind 127.0.0.1 --save "" --dir "$w" --daemonize no >/dev/null & pids+=($!)
moto_server -H 127.0.0.1 -p "$sport" >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 300); do (echo > /dev/tcp/127.0.0.1/$sport) 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
ep=http://127.0.0.1:$sport; meta=redis://127.0.0.1:$rport/1
for b in vecfs raw; do python3 scripts/mkbucket.py s3 "$ep/$b"; done
"${bins[0]}" format "$meta" bench --storage s3 --bucket "$ep/vecfs" >/dev/null
"${bins[0]}" mount "$meta" "$w/mntA" -d --cache-dir memory --log "$w/a.log" >/dev/null
for i in $(seq "$n"); do head -c "${size}M" /dev/urandom > "$w/mntA/f$i"; done
fusermount -u "$w/mntA"
python3 scripts/s3raw.py "$ep" raw --total-mib 512 | sed 's/^/server /'
echo "bound (mem + buf + 200): $((mem + buf + 200)) MiB"
printf '%-40s %8s %10s %8s %6s\n' binary "MiB/s" "peak MiB" "CPU s" GETs
for r in $(seq "$rounds"); do
  for bin in "${bins[@]}"; do
    rm -rf "$w/cache"; sync; echo 3 > /proc/sys/vm/drop_caches
    "$bin" mount "$meta" "$w/mntB" -d --cache-dir "$w/cache" --mem-cache-size "$mem" \
      --buffer-size "$buf" --log "$w/b.log" --metrics "127.0.0.1:$mport" >/dev/null
    pid=$(pgrep -f "mount @env $w/mntB" | head -1)
    s=$(date +%s.%N)
    dds=()
    for i in $(seq "$n"); do dd if="$w/mntB/f$i" of=/dev/null bs=1M 2>/dev/null & dds+=($!); done
    wait "${dds[@]}"
    e=$(date +%s.%N)
    hwm=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status")
    cpu=$(awk '{print ($14+$15)/100}' "/proc/$pid/stat")
    gets=$(curl -s "127.0.0.1:$mport/metrics" | awk '$1 == "vecfs_object_get_total" {print $2}')
    printf '%-40s %8.1f %10s %8s %6s\n' "$bin" "$(python3 -c "print($n*$size/($e-$s))")" "$hwm" "$cpu" "$gets"
    fusermount -u "$w/mntB"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
done
