"""Recall and speed of the store's approximate index (faiss HNSW) against exact search.

    python benchmarks/store_recall.py [--sizes 16384,65536,131072] [--dim 16]

For each store size N: N keys of one kv head, 512 queries; recall@k = the fraction of the exact top-k (by q.k,
all entries visible) that the approximate index returns, and the time of one decode-style search (one query
position, 4 heads) with each index.  Keys and queries are Gaussian (the hardest case for a graph index: no
cluster structure); the passkey benchmark measures the index on a model's own keys.
Results: benchmarks/results/store_recall.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from bmojo.memory import StoreConfig
from bmojo.memory.index import EF_SEARCH, HNSW_M, LayerIndex, ann_available


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16384,65536,131072")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--queries", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/store_recall.json")
    args = ap.parse_args()
    if not ann_available():
        print("faiss is not installed: pip install 'bmojo[ann]'", file=sys.stderr)
        return 2
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    for N in (int(x) for x in args.sizes.split(",")):
        keys = torch.randn(N, 1, args.dim, generator=g)
        q = torch.randn(args.queries, 4, args.dim, generator=g)
        qpos = torch.full((args.queries,), N + 10**6)
        ex = LayerIndex(1, args.dim, StoreConfig(search="exact"))
        an = LayerIndex(1, args.dim, StoreConfig(search="ann", ann_threshold=0))
        ex.add(keys, torch.arange(N), torch.arange(N))
        t = time.perf_counter()
        an.add(keys, torch.arange(N), torch.arange(N))
        build = time.perf_counter() - t
        e, a = ex.search(q, qpos, 32, args.k)[0], an.search(q, qpos, 32, args.k)[0]
        hits = (e[..., :, None] == a[..., None, :]).any(-1).float().mean().item()
        lat = {}
        for name, ix in (("exact", ex), ("ann", an)):
            ix.search(q[:1], qpos[:1], 32, args.k)
            t = time.perf_counter()
            for i in range(64):
                ix.search(q[i:i + 1], qpos[:1], 32, args.k)
            lat[name] = (time.perf_counter() - t) / 64 * 1e3
        row = {"entries": N, "dim": args.dim, "k": args.k, "recall": hits, "build_s": build,
               "search_ms_exact": lat["exact"], "search_ms_ann": lat["ann"],
               "index_bytes_exact": ex.nbytes(), "index_bytes_ann": an.nbytes()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    res = {"hnsw": {"M": HNSW_M, "efSearch": EF_SEARCH}, "threads": args.threads,
           "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                      f"faiss {faiss.__version__}", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
