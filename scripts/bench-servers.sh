# shellcheck shell=bash disable=SC2034  # sourced: the variables are for the caller
# Sourced by the side-by-side benchmarks: builds vecfs, makes a work
# directory (removed on exit, with every mount under it unmounted), starts a
# private redis-server and moto S3 server on free loopback ports and creates
# one bucket per name in BUCKETS. Sets: vecfs, work, pids, rport, sport,
# endpoint, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (moto takes any).
# Optional env: BENCH_REDIS_PORT and BENCH_S3_PORT (default: free ports);
# BENCH_BIND=0.0.0.0 makes both servers listen beyond loopback (for mounts
# in other network namespaces; default 127.0.0.1).
bash scripts/deps.sh --bench
# VECFS_BIN: benchmark that binary instead of building this tree's release one.
[[ -n ${VECFS_BIN:-} ]] || cargo build --release --quiet
vecfs=${VECFS_BIN:-$PWD/target/release/vecfs}
work=$(mktemp -d "/tmp/${WORK_PREFIX:-vecfs-bench}.XXXX")
pids=()
cleanup() {
  for m in "$work"/mnt-*; do umount -l "$m" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=${BENCH_REDIS_PORT:-$(free_port)}; sport=${BENCH_S3_PORT:-$(free_port)}
redis-server --port "$rport" --bind "${BENCH_BIND:-127.0.0.1}" --protected-mode no --save "" --dir "$work" --daemonize no >/dev/null &
pids+=($!)
moto_server -H "${BENCH_BIND:-127.0.0.1}" -p "$sport" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 200); do (echo > /dev/tcp/127.0.0.1/"$sport") 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
endpoint=http://127.0.0.1:$sport
for b in ${BUCKETS:-vecfs s3fs rclone}; do python3 scripts/mkbucket.py s3 "$endpoint/$b"; done
