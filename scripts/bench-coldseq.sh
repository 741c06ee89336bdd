#!/usr/bin/env bash
# Cold sequential read against the store's raw parallel GET throughput, and
# the same file again from the local disk cache against the local disk, all
# in one run on one redis-server and one moto S3 server on loopback (issue
# 11, item 3). One SIZE MiB file of random bytes (stored raw) is written
# through a writer mount; then per round and per binary:
#   raw   scripts/s3raw.py right before (8 threads, 4 MiB objects, 512 MiB)
#   cold  a fresh reader mount with an empty disk cache, kernel caches
#         dropped, `dd bs=1M` of the file: MiB/s, share of raw, daemon CPU
#         seconds per GiB read, peak RSS (VmHWM), whole-object GETs
#   mem   the same with `--cache-dir memory` (no disk-cache writes at all)
#   disk  the daemon unmounted (it waits for its disk-cache writes), a fresh
#         daemon on the same cache dir, kernel caches dropped, `dd` again:
#         MiB/s from the disk cache, GETs (0 when the cold read filled it)
#   local `dd` of the same bytes from a file on the local disk, page cache
#         dropped
# PERF=1 records the first binary's cold read with perf (cpu-clock, call
# graphs) into $PERF_OUT (default /tmp/vecfs-coldseq.perf.data); PERF=mem
# records its memory-cache-only read instead.
#
# Usage: scripts/bench-coldseq.sh [BIN...]   (default: target/release/vecfs)
# Env: SIZE (1024), ROUNDS (2), MEM (512), BUF (300).
set -euo pipefail
cd "$(dirname "$0")/.."
bins=("$@")
((${#bins[@]})) || { cargo build --release --quiet; bins=("$PWD/target/release/vecfs"); }
size=${SIZE:-1024}; rounds=${ROUNDS:-2}; mem=${MEM:-512}; buf=${BUF:-300}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port); sport=$(free_port); mport=$(free_port)
w=$(mktemp -d /tmp/vecfs-coldseq.XXXX)
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
head -c "${size}M" /dev/urandom > "$w/local.bin"
cp "$w/local.bin" "$w/mntA/f"
fusermount -u "$w/mntA"

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
metric() { curl -s "127.0.0.1:$mport/metrics" | awk -v n="$1" '$1 == n {print $2}'; }
ddrate() { # FILE -> MiB/s
  local s e
  s=$(date +%s.%N); dd if="$1" of=/dev/null bs=1M 2>/dev/null; e=$(date +%s.%N)
  python3 -c "print('%.0f' % ($size / ($e - $s)))"
}
mountB() { # BIN CACHE-DIR
  # --free-space-ratio: a shared machine's disk may be past the default
  # 10 % free, and a refusing disk cache would measure nothing.
  "$1" mount "$meta" "$w/mntB" -d --cache-dir "$2" --mem-cache-size "$mem" --free-space-ratio 0.01 \
    --buffer-size "$buf" --log "$w/b.log" --metrics "127.0.0.1:$mport" >/dev/null
  pgrep -f "mount @env $w/mntB" | head -1
}
umountB() { # PID
  fusermount -u "$w/mntB"
  for _ in $(seq 600); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
}
perf_start() { # PID: first round, first binary only
  if [[ $r == 1 && $bin == "${bins[0]}" ]]; then
    perf record -F 499 -g -p "$1" -o "${PERF_OUT:-/tmp/vecfs-coldseq.perf.data}" 2>/dev/null & perf=$!
    sleep 0.5
  fi
}
cpu_s() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
gib() { python3 -c "print('%.2f' % ($1 * 1024 / $size))"; }
pct() { python3 -c "print('%.0f%%' % (100.0 * $1 / $2))"; }

printf '%-28s %6s | %6s %5s %7s %6s %5s | %6s %5s %7s | %6s %5s %5s %6s\n' \
  binary rawGET cold "%raw" "CPUs/G" peakMB GETs mem "%raw" "CPUs/G" disk GETs local "%loc"
for r in $(seq "$rounds"); do
  for bin in "${bins[@]}"; do
    raw=$(python3 scripts/s3raw.py "$ep" raw --total-mib 512 | awk '$2 == "get" {print $3}')
    # cold, with a disk cache
    rm -rf "$w/cache"; drop_caches
    pid=$(mountB "$bin" "$w/cache")
    g0=$(metric vecfs_object_get_total); c0=$(cpu_s "$pid")
    [[ ${PERF:-} == 1 ]] && perf_start "$pid"
    cold=$(ddrate "$w/mntB/f")
    [[ -n ${perf:-} ]] && { kill -INT "$perf"; wait "$perf" || true; unset perf; }
    ccpu=$(python3 -c "print($(cpu_s "$pid") - $c0)")
    hwm=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status")
    gets=$(( $(metric vecfs_object_get_total) - g0 ))
    umountB "$pid"
    # the disk cache the cold read filled, fresh daemon
    drop_caches
    pid=$(mountB "$bin" "$w/cache")
    g0=$(metric vecfs_object_get_total)
    disk=$(ddrate "$w/mntB/f")
    dgets=$(( $(metric vecfs_object_get_total) - g0 ))
    umountB "$pid"
    # cold, memory cache only
    drop_caches
    pid=$(mountB "$bin" memory)
    c0=$(cpu_s "$pid")
    [[ ${PERF:-} == mem ]] && perf_start "$pid"
    memr=$(ddrate "$w/mntB/f")
    [[ -n ${perf:-} ]] && { kill -INT "$perf"; wait "$perf" || true; unset perf; }
    mcpu=$(python3 -c "print($(cpu_s "$pid") - $c0)")
    umountB "$pid"
    drop_caches
    loc=$(ddrate "$w/local.bin")
    printf '%-28s %6.0f | %6s %5s %7s %6s %5s | %6s %5s %7s | %6s %5s %5s %6s\n' \
      "$(basename "$(dirname "$bin")")/$(basename "$bin")" "$raw" \
      "$cold" "$(pct "$cold" "$raw")" "$(gib "$ccpu")" "$hwm" "$gets" \
      "$memr" "$(pct "$memr" "$raw")" "$(gib "$mcpu")" \
      "$disk" "$dgets" "$loc" "$(pct "$disk" "$loc")"
  done
done
