#!/usr/bin/env bash
# `vecfs rmr` against `rm -rf` (issue 12): the same tree (DIRS directories
# of FILES files of 4 KiB; default 20 x 500) is written into a fresh volume
# on moto's S3 server and a private redis-server, then removed once with
# `rm -rf` through FUSE and once with `vecfs rmr`. The volume has no trash
# days; the timed part is the removal command only (objects are freed by the
# background deleter afterwards in both cases).
#
# Usage: scripts/bench-rmr.sh
# Env: VECFS (binary; default: this tree's release build, built if missing),
# DIRS (20), FILES (500).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${VECFS:-} ]]; then
  cargo build --release --quiet
  VECFS=$PWD/target/release/vecfs
fi
dirs=${DIRS:-20} files=${FILES:-500}

work=$(mktemp -d /tmp/vecfs-rmr.XXXX)
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
url=redis://127.0.0.1:$rport/1
bucket=http://127.0.0.1:$sport/rmr
python3 scripts/mkbucket.py s3 "$bucket"
"$VECFS" format "$url" vol --storage s3 --bucket "$bucket" --trash-days 0 >/dev/null
mnt=$work/mnt
mkdir -p "$mnt"
"$VECFS" mount -d "$url" "$mnt" --metrics none --cache-dir "$work/cache" \
  --log "$work/vecfs.log" >/dev/null

make_tree() {
  python3 - "$1" "$dirs" "$files" <<'EOF'
import os, sys
root, dirs, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
buf = os.urandom(4096)
os.mkdir(root)
for d in range(dirs):
    p = os.path.join(root, f"segment{d}")
    os.mkdir(p)
    for f in range(files):
        with open(os.path.join(p, f"f{f}"), "wb") as fh:
            fh.write(buf)
EOF
}

timed() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null
  t1=$(date +%s.%N)
  python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.2f}')" "$t0" "$t1"
}

n=$((dirs * files))
echo "binary: $VECFS (sha256 $(sha256sum "$VECFS" | cut -c1-12))"
echo "tree: $dirs directories x $files files of 4 KiB ($n files), moto S3 + redis on loopback"
make_tree "$mnt/a"
sync
rm_s=$(timed rm -rf "$mnt/a")
[[ ! -e $mnt/a ]] || { echo "rm -rf left $mnt/a" >&2; exit 1; }
make_tree "$mnt/b"
sync
rmr_s=$(timed "$VECFS" rmr "$mnt/b")
[[ ! -e $mnt/b ]] || { echo "rmr left $mnt/b" >&2; exit 1; }
inodes=$(redis-cli -p "$rport" -n 1 GET '{vol}totalInodes')
echo "| command      | files |      s |  files/s |"
echo "| ------------ | ----- | ------ | -------- |"
python3 -c "
import sys
n = int(sys.argv[1])
for name, s in (('rm -rf', float(sys.argv[2])), ('vecfs rmr', float(sys.argv[3]))):
    print(f'| {name:<12} | {n:>5} | {s:>6.2f} | {n/s:>8.0f} |')
print(f'speed-up: {float(sys.argv[2])/float(sys.argv[3]):.1f}x; inodes left: {sys.argv[4]} (root)')
" "$n" "$rm_s" "$rmr_s" "$inodes"
"$VECFS" umount "$mnt" >/dev/null
