#!/usr/bin/env bash
# Side-by-side run of `vecfs bench` on: the local disk (the kernel ceiling),
# vecfs over moto's S3 server, s3fs-fuse and rclone mount over the same
# server, all in one go on this machine. Prints each table and the vecfs
# daemon's peak RSS. Usage: scripts/bench-compare.sh [BIG_FILE_SIZE] [JOBS]
# The fio and mdtest harness of issue 4 is scripts/bench-fio.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1G}
jobs=${2:-1}
bash scripts/deps.sh --bench
cargo build --release --quiet
vecfs=$PWD/target/release/vecfs
work=$(mktemp -d /tmp/vecfs-compare.XXXX)
pids=()
cleanup() {
  for m in "$work"/mnt-*; do umount -l "$m" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port); sport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --dir "$work" --daemonize no >/dev/null &
pids+=($!)
moto_server -H 127.0.0.1 -p "$sport" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 200); do (echo > /dev/tcp/127.0.0.1/$sport) 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
for b in vecfs s3fs rclone; do python3 scripts/mkbucket.py s3 "http://127.0.0.1:$sport/$b"; done
mkdir -p "$work/mnt-local" "$work/mnt-vecfs" "$work/mnt-s3fs" "$work/mnt-rclone"

echo "== local disk ($work)"
"$vecfs" bench "$work/mnt-local" --big-file-size "$size" -p "$jobs"

echo "== vecfs over S3 (moto)"
"$vecfs" format "redis://127.0.0.1:$rport/1" bench --storage s3 --bucket "http://127.0.0.1:$sport/vecfs" >/dev/null
"$vecfs" mount "redis://127.0.0.1:$rport/1" "$work/mnt-vecfs" -d --cache-dir "$work/cache" --log "$work/vecfs.log" >/dev/null
"$vecfs" bench "$work/mnt-vecfs" --big-file-size "$size" -p "$jobs"
dpid=$(pgrep -f "vecfs mount @env $work/mnt-vecfs" | head -1)
echo "vecfs daemon peak RSS: $(grep VmHWM /proc/$dpid/status | awk '{print $2/1024 " MiB"}')"

echo "== s3fs over S3 (moto)"
echo "bench:bench" > "$work/s3fs.passwd"; chmod 600 "$work/s3fs.passwd"
if s3fs s3fs "$work/mnt-s3fs" -o url="http://127.0.0.1:$sport" -o use_path_request_style \
     -o passwd_file="$work/s3fs.passwd" 2>/dev/null; then
  "$vecfs" bench "$work/mnt-s3fs" --big-file-size "$size" -p "$jobs" --small-file-count 50 || echo "s3fs bench failed"
else
  echo "s3fs could not mount"
fi

echo "== rclone mount --vfs-cache-mode full over S3 (moto)"
if env -u AWS_CA_BUNDLE rclone mount ":s3,provider=Other,endpoint='http://127.0.0.1:$sport',access_key_id=bench,secret_access_key=bench:rclone" \
     "$work/mnt-rclone" --vfs-cache-mode full --cache-dir "$work/rclone-cache" --daemon 2>/dev/null; then
  # the endpoint is quoted: a bare URL's colons would end the connection string
  for _ in $(seq 100); do grep -qs " $work/mnt-rclone " /proc/mounts && break; sleep 0.1; done
  "$vecfs" bench "$work/mnt-rclone" --big-file-size "$size" -p "$jobs" || echo "rclone bench failed"
else
  echo "rclone could not mount"
fi
