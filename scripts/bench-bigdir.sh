#!/usr/bin/env bash
# Large directories side by side: for each size N, creates N empty files in
# one directory (4 parallel creators), then times a cold `ls -f | wc -l`
# (dentry and inode caches dropped first), a warm one, and `ls -l` (stat of
# every entry), on the local disk and on a vecfs mount (redis + file store).
# Prints entries/s per listing and the vecfs daemon's peak RSS growth.
#
# Usage: scripts/bench-bigdir.sh [N ...]     (default: 10000 100000)
# Env: VECFS_BIN runs that vecfs binary instead of target/release/vecfs.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(10000 100000)
for n in "${sizes[@]}"; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "bench-bigdir: size '$n' is not a number" >&2; exit 1; }
done
BUCKETS=vecfs
# shellcheck source=scripts/bench-servers.sh
source scripts/bench-servers.sh

"$vecfs" format "redis://127.0.0.1:$rport/1" bigdir --storage file --bucket "$work/store" >/dev/null
mkdir -p "$work/mnt-vecfs" "$work/local"
"$vecfs" mount "redis://127.0.0.1:$rport/1" "$work/mnt-vecfs" -d --cache-dir "$work/cache" --log "$work/vecfs.log" >/dev/null
daemon=$(pgrep -f "vecfs mount .*$work/mnt-vecfs" | head -1)

create() { # DIR N: N empty files from 4 processes
  python3 - "$1" "$2" <<'EOF'
import os, sys
from multiprocessing import Pool
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
def make(r):
    for i in range(r, n, 4):
        os.close(os.open(f"{d}/seg_{i:08d}", os.O_CREAT | os.O_WRONLY, 0o644))
with Pool(4) as p:
    p.map(make, range(4))
EOF
}
timed() { # prints seconds taken by the command, checks it listed N entries
  local want=$1; shift
  local t0 t1 got
  t0=$(date +%s.%N)
  got=$("$@" | wc -l)
  t1=$(date +%s.%N)
  [[ $got -ge $want ]] || { echo "bench-bigdir: listed $got entries, want $want" >&2; exit 1; }
  echo "$t1 - $t0" | bc -l
}
hwm() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$daemon/status"; }

printf '%-8s %9s %12s %12s %12s %10s\n' where entries 'ls -f cold' 'ls -f warm' 'ls -l cold' 'rss +MiB'
for n in "${sizes[@]}"; do
  for where in local vecfs; do
    if [[ $where == local ]]; then d=$work/local/d$n; else d=$work/mnt-vecfs/d$n; fi
    create "$d" "$n"
    rss0=$([[ $where == vecfs ]] && hwm || echo 0)
    sync; echo 2 > /proc/sys/vm/drop_caches
    cold=$(timed "$n" ls -f "$d")
    warm=$(timed "$n" ls -f "$d")
    sync; echo 2 > /proc/sys/vm/drop_caches
    long=$(timed "$n" ls -l "$d")
    rss=$([[ $where == vecfs ]] && echo $(( $(hwm) - rss0 )) || echo -)
    rate() { echo "$n / $1" | bc -l | xargs printf '%.0f/s'; }
    printf '%-8s %9d %12s %12s %12s %10s\n' "$where" "$n" "$(rate "$cold")" "$(rate "$warm")" "$(rate "$long")" "$rss"
  done
done
"$vecfs" umount "$work/mnt-vecfs"
