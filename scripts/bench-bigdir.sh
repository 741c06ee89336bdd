#!/usr/bin/env bash
# Large directories side by side: for each size N, creates N empty files in
# one directory (P parallel creators, timed), then times a cold `ls -f | wc
# -l` (vecfs: after a remount, so neither the daemon nor the kernel holds
# anything; both: dentry and inode caches dropped first), a warm one, `ls -l`
# cold (stat of every entry), and the removal of every file (P parallel
# removers), on the local disk and on a vecfs mount (redis + file store).
# Prints seconds and entries/s per step, and the vecfs daemon's peak RSS
# (VmHWM of the daemon mounted fresh before the cold listing: "rss" after
# all listings, "+ -f" its growth over the two `ls -f`, "+ -l" over all).
#
# Usage: scripts/bench-bigdir.sh [N ...]     (default: 10000 100000)
# Env: VECFS_BIN runs that vecfs binary instead of target/release/vecfs;
# VECFS_BINS="BIN1 BIN2 ..." lists the same vecfs directories with each
# binary in turn (remounted; created with the first, removed with the last);
# P (4) creators/removers; KEEP=1 skips the removal (and keeps nothing else).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(10000 100000)
for n in "${sizes[@]}"; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "bench-bigdir: size '$n' is not a number" >&2; exit 1; }
done
par=${P:-4}
BUCKETS=vecfs
# shellcheck source=scripts/bench-servers.sh
source scripts/bench-servers.sh

meta=redis://127.0.0.1:$rport/1
bins=("$vecfs")
[[ -n ${VECFS_BINS:-} ]] && read -r -a bins <<<"$VECFS_BINS"
vecfs=${bins[0]}
"$vecfs" format "$meta" bigdir --storage file --bucket "$work/store" >/dev/null
mkdir -p "$work/mnt-vecfs" "$work/local"
daemon=
mount_vecfs() {
  "$vecfs" mount "$meta" "$work/mnt-vecfs" -d --cache-dir "$work/cache" --log "$work/vecfs.log" >/dev/null
  daemon=$(pgrep -f " mount .*$work/mnt-vecfs" | head -1)
}
mount_vecfs

# parallel DIR N create|remove: N files seg_00000000... from $par processes
parallel() {
  python3 - "$1" "$2" "$3" "$par" <<'EOF'
import os, sys
from multiprocessing import Pool
d, n, what, par = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
os.makedirs(d, exist_ok=True)
def work(r):
    for i in range(r, n, par):
        p = f"{d}/seg_{i:08d}"
        if what == "create":
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
        else:
            os.unlink(p)
with Pool(par) as p:
    p.map(work, range(par))
EOF
}
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
timed() { # prints seconds taken by the command, checks it listed N entries
  local want=$1; shift
  local t0 t1 got
  t0=$(now)
  got=$("$@" | wc -l)
  t1=$(now)
  [[ $got -ge $want ]] || { echo "bench-bigdir: listed $got entries, want $want" >&2; exit 1; }
  secs "$t0" "$t1"
}
hwm() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$daemon/status"; }
rate() { echo "$1 / $2" | bc -l | xargs printf '%.0f'; }

printf '%-12s %9s %15s %15s %15s %15s %15s %5s %5s %5s\n' where entries create 'ls -f cold' 'ls -f warm' \
  'ls -l cold' remove 'rss' '+ -f' '+ -l'
json=()
cell() { printf '%.1fs %.0fk/s' "$1" "$(echo "$n / $1 / 1000" | bc -l)"; }
for n in "${sizes[@]}"; do
  for where in local vecfs; do
    if [[ $where == local ]]; then d=$work/local/d$n; wheres=(local); else d=$work/mnt-vecfs/d$n; wheres=("${bins[@]}"); fi
    t0=$(now); parallel "$d" "$n" create; create=$(secs "$t0" "$(now)")
    for k in "${!wheres[@]}"; do
      w=${wheres[k]} label=$where
      if [[ $where == vecfs ]]; then
        vecfs=$w
        ((${#bins[@]} > 1)) && label=vecfs:$(basename "$w")
        "$vecfs" umount "$work/mnt-vecfs" >/dev/null; mount_vecfs
      fi
      rss0=$([[ $where == vecfs ]] && hwm || echo 0)
      sync; echo 2 > /proc/sys/vm/drop_caches
      cold=$(timed "$n" ls -f "$d")
      warm=$(timed "$n" ls -f "$d")
      rss=- growf=- growl=-
      [[ $where == vecfs ]] && growf=$(($(hwm) - rss0))
      sync; echo 2 > /proc/sys/vm/drop_caches
      long=$(timed "$n" ls -l "$d")
      if [[ $where == vecfs ]]; then rss=$(hwm); growl=$((rss - rss0)); fi
      remove=0
      if [[ -z ${KEEP:-} ]] && ((k == ${#wheres[@]} - 1)); then
        t0=$(now); parallel "$d" "$n" remove; rmdir "$d"; remove=$(secs "$t0" "$(now)")
      fi
      printf '%-12s %9d %15s %15s %15s %15s %15s %5s %5s %5s\n' "$label" "$n" \
        "$(if ((k == 0)); then cell "$create"; else echo -; fi)" "$(cell "$cold")" "$(cell "$warm")" "$(cell "$long")" \
        "$(if [[ $remove != 0 ]]; then cell "$remove"; else echo -; fi)" "$rss" "$growf" "$growl"
      json+=("$(printf '{"where":"%s","entries":%d,"create_s":%.3f,"ls_f_cold_s":%.3f,"ls_f_warm_s":%.3f,"ls_l_cold_s":%.3f,"remove_s":%.3f,"ls_f_cold_per_s":%s,"ls_f_warm_per_s":%s,"rss_mib":"%s","rss_growth_ls_f_mib":"%s","rss_growth_ls_l_mib":"%s"}' \
        "$label" "$n" "$create" "$cold" "$warm" "$long" "$remove" "$(rate "$n" "$cold")" "$(rate "$n" "$warm")" "$rss" "$growf" "$growl")")
    done
  done
done
"$vecfs" umount "$work/mnt-vecfs" >/dev/null
(IFS=,; echo "{\"bigdir\":[${json[*]}],\"par\":$par,\"loadavg\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}")
