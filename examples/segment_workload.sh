#!/usr/bin/env bash
# A small Milvus-style workload: a writer creates segment folders (raw
# vectors, ids, a bloom filter, an index), closes them, then the files are
# read back whole and checked against the checksums taken at write time.
#   examples/segment_workload.sh DIR [COLLECTIONS] [SEGMENTS]
set -euo pipefail
dir=${1:?usage: segment_workload.sh DIR [COLLECTIONS] [SEGMENTS]}
collections=${2:-2}
segments=${3:-3}
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
mkdir -p "$dir"
for c in $(seq 1 "$collections"); do
  for s in $(seq 1 "$segments"); do
    seg="$dir/collection_$c/segment_$(printf %04d "$s")"
    mkdir -p "$seg"
    head -c $((4 << 20)) /dev/urandom > "$src/vectors.bin"   # float32 vectors
    seq 1 200000 > "$src/ids.bin"                             # ids
    head -c 65536 /dev/urandom > "$src/bloom.bin"
    head -c $((2 << 20)) /dev/urandom > "$src/index.bin"
    for f in vectors.bin ids.bin bloom.bin index.bin; do
      cp "$src/$f" "$seg/$f"
      (cd "$src" && sha256sum "$f") | sed "s|  |  $seg/|" >> "$src/SUMS"
    done
  done
done
sync
files=$(wc -l < "$src/SUMS")
bytes=$(du -scb "$dir" | tail -1 | cut -f1)
sha256sum --quiet -c "$src/SUMS"
echo "segment workload: $files files, $((bytes >> 20)) MiB written and read back, checksums match"
