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
WORK_PREFIX=vecfs-compare source scripts/bench-servers.sh
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
