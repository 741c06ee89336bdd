#!/usr/bin/env bash
# The segment benchmark of issue 11: a writer inserts batches of vectors as
# Milvus-1.x segments (db/tables/<collection>/<segment>/ with <id>.rv,
# <id>.uid, bloom_filter, deleted_docs), readers on other mounts learn of
# each segment out of band (a manifest file), load it whole READER_DELAY
# later, check every CRC and answer a brute-force top-10 query whose answer
# the writer computed. scripts/segments.py does the writing, reading and the
# summary; this script sets up the servers and mounts, side by side in one
# run:
#   local       both roles on one local directory; each segment loaded twice:
#               "warm" (page cache as the writer left it), then "cold" (kernel
#               caches dropped first)
#   vecfs       writer mount A, read-only reader mount B (own cache dir),
#               separate vecfs processes, no warm-up
#   vecfs-warm  as vecfs, B mounted with --warm-on-commit '*.rv,*.uid,bloom_filter'
#               (skipped, with a note, when this build has no such option)
#   rclone      rclone mount --vfs-cache-mode full for A and B over the same S3
#               server (B: --read-only --dir-cache-time 1s). A keeps the default
#               --vfs-write-back 5s: with 0s rclone 1.60 loses a file renamed
#               over one whose upload is under way (bloom_filter never reaches S3)
# One redis-server and one moto S3 server (scripts/bench-servers.sh).
#
# With --readers N (N > 1) every target gets N readers, and each reader
# daemon (vecfs, rclone) runs in a network namespace of its own, reaching the
# servers over a veth pair as in tests/netns.rs; the veth's received bytes
# count what each reader pulled over the network. Each reader then loads
# each segment twice ("first", "again": a reload, as after a release) to show
# the store is read once per reader, not once per load.
#
# Usage: scripts/bench-segments.sh [--batches 10] [--rows 100000] [--dim 128]
#   [--seed 42] [--interval 1-8] [--reader-delay 1] [--readers 1]
#   [--targets local,vecfs,vecfs-warm,rclone] [--port-base P]
# --interval MIN[-MAX]: seconds between batches (uniform; default 1-8).
# --port-base P: redis on P, moto on P+1, metrics from P+10 (default: free ports).
# Env: VECFS_BIN runs that vecfs binary instead of target/release/vecfs;
# SEGMENTS_KEEP=DIR keeps the per-load JSON lines, notes and daemon logs there.
set -euo pipefail
cd "$(dirname "$0")/.."

batches=10 rows=100000 dim=128 seed=42 interval=1-8 delay=1 readers=1
targets=local,vecfs,vecfs-warm,rclone port_base=""
while (($#)); do
  case $1 in
    --batches) batches=$2 ;;
    --rows) rows=$2 ;;
    --dim) dim=$2 ;;
    --seed) seed=$2 ;;
    --interval) interval=$2 ;;
    --reader-delay) delay=$2 ;;
    --readers) readers=$2 ;;
    --targets) targets=$2 ;;
    --port-base) port_base=$2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift 2
done
IFS=, read -r -a targets <<<"$targets"
[[ $readers =~ ^[1-9][0-9]*$ ]] || { echo "--readers wants a positive number" >&2; exit 2; }

if ! python3 -c 'import numpy' 2>/dev/null; then
  echo "installing numpy (pip)"
  python3 -m pip install -q numpy 2>/dev/null || python3 -m pip install -q --break-system-packages numpy
fi

# Network namespaces for the readers (before the servers, which then listen
# on every address so the namespaces reach them through their veth pair).
nsid=$(($$ % 200 + 20))
netns=()
netns_cleanup() {
  local i
  for i in "${!netns[@]}"; do
    ip netns del "${netns[$i]}" 2>/dev/null || true
    ip link del "vsh$nsid-$i" 2>/dev/null || true
  done
}
host=127.0.0.1
if ((readers > 1)); then
  trap netns_cleanup EXIT
  for ((i = 1; i <= readers; i++)); do
    ns=vecfs-seg$nsid-$i
    ip netns add "$ns"
    netns[i]=$ns
    ip link add "vsh$nsid-$i" type veth peer name "vsn$nsid-$i"
    ip link set "vsn$nsid-$i" netns "$ns"
    ip addr add "10.$nsid.$i.1/24" dev "vsh$nsid-$i"
    ip link set "vsh$nsid-$i" up
    ip -n "$ns" addr add "10.$nsid.$i.2/24" dev "vsn$nsid-$i"
    ip -n "$ns" link set "vsn$nsid-$i" up
    ip -n "$ns" link set lo up
    # the servers' address is the first pair's host side
    ip -n "$ns" route add default via "10.$nsid.$i.1"
  done
  host=10.$nsid.1.1
  export BENCH_BIND=0.0.0.0
fi
if [[ -n $port_base ]]; then
  export BENCH_REDIS_PORT=$port_base BENCH_S3_PORT=$((port_base + 1))
fi
# shellcheck source=scripts/bench-servers.sh
WORK_PREFIX=vecfs-seg BUCKETS="seg-vecfs seg-warm seg-rclone seg-raw" source scripts/bench-servers.sh
vecfs=${VECFS_BIN:-$vecfs}
all_cleanup() {
  local m
  for m in "$work"/mnt-*; do
    if grep -qs " $m " /proc/mounts; then fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; fi
  done
  cleanup
  netns_cleanup
}
trap all_cleanup EXIT
trap 'exit 130' INT TERM
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
endpoint=http://$host:$sport
out=$work/results notes=$work/notes
mkdir -p "$out"
: >"$notes"
note() { echo "note: $*" >&2; echo "$*" >>"$notes"; }

next_port=${port_base:+$((port_base + 10))}
metrics_port() {
  if [[ -n $next_port ]]; then echo "$next_port"; next_port=$((next_port + 1)); else free_port; fi
}
wait_mounted() {
  for _ in $(seq 300); do grep -qs " $1 " /proc/mounts && return 0; sleep 0.1; done
  echo "$1 did not mount" >&2; return 1
}
# in_ns I CMD...: runs CMD in reader I's network namespace (on the host when readers=1)
in_ns() {
  local i=$1; shift
  if ((readers > 1)); then nsenter --net="/run/netns/${netns[$i]}" "$@"; else "$@"; fi
}
reader_addr() { if ((readers > 1)); then echo "10.$nsid.$1.2"; else echo 127.0.0.1; fi; }
veth_rx() { ip netns exec "${netns[$1]}" cat "/sys/class/net/vsn$nsid-$1/statistics/rx_bytes"; }

warm_ok=1
"$vecfs" mount --help | grep -q -- --warm-on-commit || warm_ok=0
db=0
rclone_remote() { echo ":s3,provider=Other,endpoint='$endpoint',access_key_id=bench,secret_access_key=bench:$1"; }

run_target() {
  local t=$1 wroot passes i m meta rpids=() metrics_url
  case $t in
    vecfs-warm)
      if ((!warm_ok)); then
        note "vecfs-warm skipped: this vecfs has no mount option --warm-on-commit"
        return 0
      fi ;;
    local | vecfs | rclone) ;;
    *) echo "unknown target $t" >&2; return 1 ;;
  esac
  echo "== $t" >&2
  passes=first
  ((readers > 1)) && passes=first,again
  [[ $t == local ]] && passes=warm,cold
  case $t in
    local)
      wroot=$work/mnt-local
      mkdir -p "$wroot" ;;
    vecfs | vecfs-warm)
      db=$((db + 1))
      meta=redis://$host:$rport/$db
      "$vecfs" format "$meta" "$t" --storage s3 --bucket "$endpoint/seg-${t#vecfs-}" >/dev/null
      wroot=$work/mnt-$t-w
      mkdir -p "$wroot"
      "$vecfs" mount "$meta" "$wroot" -d --cache-dir "$work/cache-$t-w" --log "$work/$t-w.log" --metrics none >/dev/null ;;
    rclone)
      wroot=$work/mnt-rclone-w
      mkdir -p "$wroot"
      env -u AWS_CA_BUNDLE rclone mount "$(rclone_remote seg-rclone)" "$wroot" --vfs-cache-mode full \
        --cache-dir "$work/cache-rclone-w" --daemon
      wait_mounted "$wroot" ;;
  esac
  for ((i = 1; i <= readers; i++)); do
    m=$wroot metrics_url=""
    case $t in
      vecfs | vecfs-warm)
        m=$work/mnt-$t-r$i
        mkdir -p "$m"
        local port extra=()
        port=$(metrics_port)
        [[ $t == vecfs-warm ]] && extra=(--warm-on-commit '*.rv,*.uid,bloom_filter')
        in_ns "$i" "$vecfs" mount "$meta" "$m" -d --read-only --cache-dir "$work/cache-$t-r$i" \
          --log "$work/$t-r$i.log" --metrics "$(reader_addr "$i"):$port" "${extra[@]}" >/dev/null
        metrics_url=http://$(reader_addr "$i"):$port/metrics ;;
      rclone)
        m=$work/mnt-rclone-r$i
        mkdir -p "$m"
        in_ns "$i" env -u AWS_CA_BUNDLE rclone mount "$(rclone_remote seg-rclone)" "$m" --vfs-cache-mode full \
          --read-only --dir-cache-time 1s --cache-dir "$work/cache-rclone-r$i" --daemon
        wait_mounted "$m" ;;
    esac
    if ((readers > 1)); then echo "$t $i $(veth_rx "$i")" >>"$work/rx-before"; fi
    python3 scripts/segments.py read --root "$m" --manifest "$work/$t.manifest" --out "$out/$t-r$i.jsonl" \
      --target "$t" --reader "$i" --passes "$passes" --reader-delay "$delay" --timeout 60 ${metrics_url:+--metrics "$metrics_url"} &
    rpids+=($!)
  done
  local wstatus=0
  python3 scripts/segments.py write --root "$wroot" --manifest "$work/$t.manifest" --batches "$batches" \
    --rows "$rows" --dim "$dim" --seed "$seed" --interval "$interval" || wstatus=$?
  if ((wstatus)); then
    note "$t: the writer failed (exit $wstatus)"
    echo '{"end": true}' >>"$work/$t.manifest"
  fi
  for p in "${rpids[@]}"; do wait "$p" || note "$t: a reader failed (exit $?)"; done
  if ((readers > 1)); then
    for ((i = 1; i <= readers; i++)); do
      local before
      before=$(awk -v t="$t" -v i="$i" '$1 == t && $2 == i {print $3}' "$work/rx-before")
      echo "$t $i $(($(veth_rx "$i") - before))" >>"$work/rx"
    done
  fi
  for m in "$work/mnt-$t-"*; do
    grep -qs " $m " /proc/mounts || continue
    if [[ $t == rclone ]]; then fusermount3 -u "$m" || umount -l "$m"; else "$vecfs" umount "$m" >/dev/null; fi
  done
  { grep -h " ERROR \|panicked" "$work/$t"-*.log 2>/dev/null || true; } | head -5 | while read -r l; do note "$t log: $l"; done
}

for t in "${targets[@]}"; do run_target "$t"; done

# The store's own floor for a load without warm-up: one segment's bytes
# (rows x dim x 4, in 4 MiB objects) fetched by 8 parallel GETs from a
# client with no file system in between, three times, median.
seg_mib=$(((rows * dim * 4 + (4 << 20) - 1) / (4 << 20) * 4))
raws=()
for _ in 1 2 3; do
  raws+=("$(python3 scripts/s3raw.py "$endpoint" seg-raw --total-mib "$seg_mib" | awk '$2 == "get" {print $3}')")
done
raw_mid=$(printf '%s\n' "${raws[@]}" | sort -g | sed -n 2p)
note "raw parallel GET of one segment ($seg_mib MiB, s3raw.py: 8 threads, 4 MiB objects): $(awk -v m="$seg_mib" -v r="$raw_mid" 'BEGIN {printf "%.3f s", m / r}') median at ${raws[*]} MiB/s, the floor of a read part without warm-up on this store"

params=$(printf '{"batches": %s, "rows": %s, "dim": %s, "seed": %s, "interval": "%s", "reader_delay": %s, "readers": %s}' \
  "$batches" "$rows" "$dim" "$seed" "$interval" "$delay" "$readers")
if [[ -n ${SEGMENTS_KEEP:-} ]]; then
  mkdir -p "$SEGMENTS_KEEP"
  cp -r "$out" "$notes" "$SEGMENTS_KEEP"/
  cp "$work"/*.log "$work"/rx "$SEGMENTS_KEEP"/ 2>/dev/null || true
fi
python3 scripts/segments.py summary --dir "$out" --notes "$notes" --params "$params" \
  --net "$work/rx"
