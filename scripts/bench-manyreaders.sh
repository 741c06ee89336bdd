#!/usr/bin/env bash
# Many readers (issue 13): one writer mount and N reader mounts, each reader
# a separate vecfs daemon in a network namespace of its own (scripts/
# bench-netns.sh, as tests/netns.rs) reaching one redis-server and one moto
# S3 server over a veth pair, for each N in one run (default 1 2 4 8).
# Per N, with N freshly mounted read-only readers (own disk cache each):
#   data      the writer writes FILES new files of SIZE MiB (random bytes);
#             then all N readers load them whole at once (one process per
#             reader, 1 MiB reads, CRC32 checked against the writer's), and
#             again ("again": a reload, page cache dropped first). Reported: aggregate and per-reader
#             MiB/s of the first load, store GET bytes per reader daemon over
#             both loads (metrics endpoint: read once per reader, not once per
#             load), Redis CPU seconds (INFO cpu, user + sys) and Redis
#             commands/s (INFO stats total_commands_processed) during the
#             first load, the bytes each namespace received (veth).
#   metadata  SMALL small files (1 KiB, made once by the writer before the
#             first N): all N readers at once stat every file, then all at
#             once open + close every file. Aggregate ops/s (N x SMALL / wall
#             time) next to N=1's; per file per reader: Redis commands
#             (total_commands_processed, which also counts the commands a
#             Lua script runs: one lookup script is 4) and the daemons' Redis
#             requests (round trips, their metrics); Redis CPU seconds and
#             the share of the stat phase's wall time Redis was busy.
# Prints a table and one JSON line.
#
# Usage: scripts/bench-manyreaders.sh [N ...]     (default: 1 2 4 8)
# Env: FILES (4), SIZE MiB (64), SMALL (10000); VECFS_BIN runs that vecfs
# binary instead of target/release/vecfs; KEEP=DIR copies logs and raw lines there.
set -euo pipefail
cd "$(dirname "$0")/.."
ns_list=("$@")
((${#ns_list[@]})) || ns_list=(1 2 4 8)
max=0
for n in "${ns_list[@]}"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "bench-manyreaders: N '$n' is not a positive number" >&2; exit 2; }
  ((n > max)) && max=$n
done
files=${FILES:-4} size=${SIZE:-64} small=${SMALL:-10000}

# The servers listen on every address; the namespaces come after them, so
# one exit trap (below) removes both even when the servers fail to start.
export BENCH_BIND=0.0.0.0
# shellcheck source=scripts/bench-servers.sh
WORK_PREFIX=bench-manyreaders BUCKETS=manyreaders source scripts/bench-servers.sh
# shellcheck source=scripts/bench-netns.sh
source scripts/bench-netns.sh
all_cleanup() {
  local m
  for m in "$work"/mnt-*; do
    grep -qs " $m " /proc/mounts && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }
  done
  if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP"; cp "$work"/*.log "$work"/*.jsonl "$KEEP"/ 2>/dev/null || true; fi
  cleanup
  netns_cleanup
}
trap all_cleanup EXIT
trap 'exit 130' INT TERM
netns_setup "$max"
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done

meta=redis://$net_host:$rport/1
ep=http://$net_host:$sport
"$vecfs" format "$meta" manyreaders --storage s3 --bucket "$ep/manyreaders" >/dev/null
mkdir -p "$work/mnt-w" "$work/src"
"$vecfs" mount "$meta" "$work/mnt-w" -d --cache-dir "$work/cache-w" --log "$work/w.log" --metrics none >/dev/null

rinfo() { # total commands processed, CPU seconds (user + sys)
  redis-cli -p "$rport" info stats | awk -F: '/^total_commands_processed:/ {printf "%s ", $2+0}'
  redis-cli -p "$rport" info cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.3f\n", s}'
}
# Redis requests (round trips; a script counts once) a reader daemon made
metareqs() { curl -s "$1" | awk '$1 ~ /^vecfs_meta_request_duration_seconds_count/ {v += $2} END {print v + 0}'; }
getbytes() { curl -s "$1" | awk '$1 == "vecfs_object_get_bytes_total" {v = $2} END {print v + 0}'; }
py=scripts/manyreaders.py

# Source files (random bytes) and their CRCs, made once; the small files.
for ((k = 1; k <= files; k++)); do head -c "${size}M" /dev/urandom >"$work/src/seg$k.rv"; done
t0=$(date +%s.%N)
python3 "$py" make "$work/mnt-w/small" "$small" --size 1024
echo "writer: $small small files in $(echo "$(date +%s.%N) - $t0" | bc -l | xargs printf '%.1f') s" >&2

rows=$work/rows.jsonl
: >"$rows"
for n in "${ns_list[@]}"; do
  echo "== N=$n" >&2
  urls=() mnts=()
  for ((i = 1; i <= n; i++)); do
    m=$work/mnt-r$i
    mkdir -p "$m"
    rm -rf "$work/cache-r$i"
    port=$(free_port)
    in_ns "$i" "$vecfs" mount "$meta" "$m" -d --read-only --cache-dir "$work/cache-r$i" \
      --log "$work/r$i-n$n.log" --metrics "$(ns_addr "$i"):$port" >/dev/null
    urls[i]=http://$(ns_addr "$i"):$port/metrics
    mnts[i]=$m
  done
  # data: the writer writes new files, then every reader loads them at once
  dir=seg-n$n
  mkdir -p "$work/mnt-w/$dir"
  for ((k = 1; k <= files; k++)); do cp "$work/src/seg$k.rv" "$work/mnt-w/$dir/"; done
  sync
  rx0=() get0=()
  for ((i = 1; i <= n; i++)); do rx0[i]=$(veth_rx "$i"); get0[i]=$(getbytes "${urls[i]}"); done
  out=$work/load-n$n.jsonl
  : >"$out"
  for pass in first again; do
    # the reload goes through each daemon (its cache), not the page cache
    [[ $pass == again ]] && { sync; echo 1 >/proc/sys/vm/drop_caches; }
    read -r c0 cpu0 < <(rinfo)
    start=$(python3 -c 'import time; print(time.time() + 1)')
    lp=()
    for ((i = 1; i <= n; i++)); do
      args=()
      for ((k = 1; k <= files; k++)); do args+=("${mnts[i]}/$dir/seg$k.rv"); done
      python3 "$py" load --start-at "$start" "${args[@]}" | sed "s/^{/{\"pass\": \"$pass\", \"reader\": $i, /" >>"$out" &
      lp+=($!)
    done
    wait "${lp[@]}"
    read -r c1 cpu1 < <(rinfo)
    [[ $pass == first ]] && { lc0=$c0 lc1=$c1 lcpu0=$cpu0 lcpu1=$cpu1; }
  done
  gets=() rxs=()
  for ((i = 1; i <= n; i++)); do
    gets[i]=$(($(getbytes "${urls[i]}") - get0[i]))
    rxs[i]=$(($(veth_rx "$i") - rx0[i]))
  done
  # metadata: all readers stat every small file at once, then open + close
  declare -A mc=() mcpu=() mreq=()
  for what in stat open; do
    r0=0
    for ((i = 1; i <= n; i++)); do r0=$((r0 + $(metareqs "${urls[i]}"))); done
    read -r c0 cpu0 < <(rinfo)
    start=$(python3 -c 'import time; print(time.time() + 1)')
    mp=()
    for ((i = 1; i <= n; i++)); do
      python3 "$py" meta --start-at "$start" --what "$what" "${mnts[i]}/small" "$small" \
        | sed "s/^{/{\"what\": \"$what\", \"reader\": $i, /" >>"$work/meta-n$n.jsonl" &
      mp+=($!)
    done
    wait "${mp[@]}"
    read -r c1 cpu1 < <(rinfo)
    mc[$what]=$((c1 - c0))
    mcpu[$what]=$(echo "$cpu1 - $cpu0" | bc -l)
    r1=0
    for ((i = 1; i <= n; i++)); do r1=$((r1 + $(metareqs "${urls[i]}"))); done
    mreq[$what]=$((r1 - r0))
  done
  for ((i = 1; i <= n; i++)); do "$vecfs" umount "${mnts[i]}" >/dev/null; done
  grep -h " ERROR \|panicked" "$work"/r*-n"$n".log 2>/dev/null | head -3 >&2 || true
  # one row for N
  python3 - "$out" "$work/meta-n$n.jsonl" "$work/src" <<EOF >>"$rows"
import json, sys, zlib, os
loads = [json.loads(l) for l in open(sys.argv[1])]
metas = [json.loads(l) for l in open(sys.argv[2])]
want = {}
for f in sorted(os.listdir(sys.argv[3])):
    want[f] = zlib.crc32(open(os.path.join(sys.argv[3], f), "rb").read())
bad = [l["reader"] for l in loads if l["crc"] != want]
first = [l for l in loads if l["pass"] == "first"]
wall = max(l["end"] for l in first) - min(l["start"] for l in first)
mib = $files * $size
def agg(what):
    m = [x for x in metas if x["what"] == what]
    return sum(x["ops"] for x in m) / (max(x["end"] for x in m) - min(x["start"] for x in m))
gets = [int(x) for x in "${gets[*]}".split()]
print(json.dumps({
    "n": $n, "files": $files, "file_mib": $size, "small": $small,
    "agg_mibs": round($n * mib / wall, 1), "load_s": round(wall, 2),
    "per_reader_mibs": [round(mib / (l["end"] - l["start"]), 1) for l in sorted(first, key=lambda l: l["reader"])],
    "again_s": round(max(l["end"] - l["start"] for l in loads if l["pass"] == "again"), 3),
    "get_mib": [round(g / 2**20, 1) for g in gets],
    "veth_rx_mib": [round(int(x) / 2**20, 1) for x in "${rxs[*]}".split()],
    "crc_bad_readers": bad,
    "redis_cpu_load": round($lcpu1 - $lcpu0, 3), "redis_cmds_load": $lc1 - $lc0,
    "redis_ops_load": round(($lc1 - $lc0) / wall, 1),
    "stat_agg": round(agg("stat"), 1), "open_agg": round(agg("open"), 1),
    "redis_per_file_stat": round(${mc[stat]} / ($n * $small), 2),
    "redis_per_file_open": round(${mc[open]} / ($n * $small), 2),
    "req_per_file_stat": round(${mreq[stat]} / ($n * $small), 2),
    "req_per_file_open": round(${mreq[open]} / ($n * $small), 2),
    "redis_cpu_stat": round(${mcpu[stat]}, 3), "redis_cpu_open": round(${mcpu[open]}, 3),
    "redis_busy_stat": round(${mcpu[stat]} * agg("stat") / ($n * $small), 3),
}))
EOF
  unset mc mcpu mreq
  tail -1 "$rows" >&2
done
"$vecfs" umount "$work/mnt-w" >/dev/null
python3 "$py" summary "$rows" "$(cut -d' ' -f1-3 /proc/loadavg)"
cp "$rows" "$work/rows-final.jsonl"
