#!/usr/bin/env bash
# dump/load throughput and memory (issue 12): a synthetic dump of one
# directory with N small inline files (made by Python from the header of a
# real dump of a fresh volume) is loaded into an empty Redis database and
# dumped again; prints wall time and peak RSS of each (GNU time), and checks
# the second dump has as many records as the first. Peak RSS that stays flat as N
# grows is what "streamed" means here.
#
# Usage: scripts/bench-dump.sh    Env: VECFS (binary; default: this tree's
# release build), N (files: 200000), PORT (a free port for redis-server: 23299).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${VECFS:-} ]]; then
  cargo build --release --quiet
  VECFS=$PWD/target/release/vecfs
fi
n=${N:-200000} port=${PORT:-23299}
work=$(mktemp -d /tmp/vecfs-dumpbench.XXXX)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
rpid=$!
trap 'kill $rpid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
"$VECFS" format "redis://127.0.0.1:$port/1" bench --bucket "$work/objects" >/dev/null
"$VECFS" dump "redis://127.0.0.1:$port/1" "$work/empty.json" 2>/dev/null
python3 - "$work/empty.json" "$work/big.json" "$n" <<'PY'
import json, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(src).read().splitlines()
root = json.loads(lines[1]); root["inode"]["nlink"] = 2
t = [1700000000, 0]
with open(dst, "w") as out:
    out.write(lines[0] + "\n" + json.dumps(root, separators=(",", ":")) + "\n")
    for p in range(0, n, 1000):
        ents = [{"name": f"f{i}", "ino": i + 2, "kind": "file"} for i in range(p, min(n, p + 1000))]
        out.write(json.dumps({"entries": {"dir": 1, "entries": ents}}, separators=(",", ":")) + "\n")
        for e in ents:
            sid = (1 << 52) | e["ino"]
            out.write(json.dumps({"inode": {"ino": e["ino"], "kind": "file", "mode": 0o644, "uid": 0, "gid": 0,
                "atime": t, "mtime": t, "ctime": t, "nlink": 1, "length": 10, "parent": 1,
                "chunks": [{"index": 0, "slices": [{"pos": 0, "id": sid, "size": 10, "off": 0, "len": 10}]}]}}) + "\n")
            out.write(json.dumps({"inline": {"id": sid, "data": "MDEyMzQ1Njc4OQ=="}}, separators=(",", ":")) + "\n")
    out.write(json.dumps({"end": {"next_inode": n + 2, "next_slice": n + 2, "inodes": n + 1, "entries": n,
        "inlines": n, "delfiles": 0, "delslices": 0}}) + "\n")
PY
echo "N=$n files, dump of $(du -h "$work/big.json" | cut -f1)"
/usr/bin/time -f "load: %e s, peak RSS %M KiB" "$VECFS" load "redis://127.0.0.1:$port/2" "$work/big.json" >/dev/null
/usr/bin/time -f "dump: %e s, peak RSS %M KiB" "$VECFS" dump "redis://127.0.0.1:$port/2" "$work/again.json" 2>&1 | grep -v '^dumped'
[[ $(wc -l <"$work/big.json") == $(wc -l <"$work/again.json") ]] && echo "dump -> load -> dump: same number of records"
