#!/usr/bin/env bash
# One command from a fresh Debian machine to a mounted vecfs volume:
# installs redis-server and fuse3, builds vecfs, starts a private
# redis-server, formats a volume on the local `file` store, mounts it, runs a
# small segment workload, and leaves it mounted.
#   scripts/quickstart.sh [STATE_DIR]   (default: /tmp/vecfs-quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
state=${1:-/tmp/vecfs-quickstart}
bash scripts/deps.sh
cargo build --release --quiet
vecfs=$PWD/target/release/vecfs
mkdir -p "$state/redis" "$state/mnt"
port_file="$state/redis/port"
if [[ -f "$port_file" ]] && redis-cli -p "$(cat "$port_file")" ping >/dev/null 2>&1; then
  port=$(cat "$port_file")
else
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$port" --bind 127.0.0.1 --dir "$state/redis" --daemonize yes \
    --appendonly yes --logfile "$state/redis/redis.log" >/dev/null
  echo "$port" > "$port_file"
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
meta="redis://127.0.0.1:$port/1"
"$vecfs" format "$meta" demo --storage file --bucket "$state/objects"
if ! grep -qs " $state/mnt fuse" /proc/mounts; then
  "$vecfs" mount "$meta" "$state/mnt" -d --cache-dir "$state/cache" --log "$state/vecfs.log"
fi
bash examples/segment_workload.sh "$state/mnt/milvus/db" 2 3
"$vecfs" status "$meta"
echo
echo "vecfs volume 'demo' is mounted at $state/mnt (metadata: $meta)."
echo "Unmount with: $vecfs umount $state/mnt"
