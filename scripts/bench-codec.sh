#!/usr/bin/env bash
# Codec benchmark with real index files: builds a faiss HNSW and IVF-Flat
# index (faiss-cpu from PyPI; skipped if it cannot be installed) over random
# normal float32 vectors, then runs `cargo bench --bench codec` on them plus
# generated vectors and ids, and the end-to-end mount comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --test
out=${BENCH_DIR:-/tmp/vecfs-bench}
mkdir -p "$out"
files=""
if python3 -c 'import faiss, numpy' 2>/dev/null || python3 -m pip install -q faiss-cpu numpy; then
  python3 - "$out" <<'PY'
import sys, numpy as np, faiss
out = sys.argv[1]
rng = np.random.default_rng(7)
x = rng.standard_normal((50000, 128)).astype("float32")
hnsw = faiss.IndexHNSWFlat(128, 32)
hnsw.add(x)
faiss.write_index(hnsw, f"{out}/faiss_hnsw.index")
q = faiss.IndexFlatL2(128)
ivf = faiss.IndexIVFFlat(q, 128, 256)
ivf.train(x)
ivf.add(x)
faiss.write_index(ivf, f"{out}/faiss_ivfflat.index")
PY
  files="$out/faiss_hnsw.index:$out/faiss_ivfflat.index"
else
  echo "faiss-cpu could not be installed: benchmarking generated data only"
fi
VECFS_BENCH_FILES="$files" cargo bench --bench codec
