"""Recall and speed of the store's approximate index (faiss HNSW) against exact search.

    python benchmarks/store_recall.py [--sizes 16384,65536,131072] [--dim 16]
    python benchmarks/store_recall.py --model benchmarks/results/passkey_storage/model_store --length 65536

Gaussian mode: for each store size N, N keys of one kv head and 512 queries; recall@k = the fraction of the
exact top-k (by q.k, all entries visible) that the approximate index returns, and the time of one decode-style
search (one query position, 4 heads) with each index.  Results: benchmarks/results/store_recall.json.

Model mode (--model): a passkey haystack of --length tokens is prefilled into an exact store by that model; the
queries of the last 256 positions and of the 4 answer steps, with the keys the store holds, are searched again
through the approximate index.  Reported per layer: recall@k, and the needle's recall (of the needle entries in
an exact top-k, the fraction the index also returns), the entries that decide the answer.
Results: benchmarks/results/store_recall_model.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bmojo.memory import StoreConfig
from bmojo.memory.index import EF_SEARCH, HNSW_M, LayerIndex, ann_available
from bmojo.utils.runtime import machine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16384,65536,131072")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--queries", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="default: benchmarks/results/store_recall[_model].json")
    ap.add_argument("--model", default=None, help="a passkey checkpoint: measure on that model's own keys")
    ap.add_argument("--length", type=int, default=65536, help="with --model: the haystack length")
    ap.add_argument("--model-opts", default='{"memory_decay": 0.5}',
                    help="with --model: JSON ModelConfig overrides (the default ages the memory, so the needle is in "
                         "the store rather than the eidetic memory)")
    args = ap.parse_args()
    if not ann_available():
        print("faiss is not installed: pip install 'bmojo[ann]'", file=sys.stderr)
        return 2
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    where = {**machine(), "faiss": faiss.__version__}
    if args.model:
        return model_keys(args, where)
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
           "machine": where, "rows": rows}
    write(args.out or "benchmarks/results/store_recall.json", res)
    return 0


def write(path, res) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(res, indent=1))


@torch.no_grad()
def model_keys(args, where) -> int:
    from bmojo.data.synthetic import PasskeyConfig, passkey
    from bmojo.memory import Store
    from bmojo.train.checkpoint import load_checkpoint

    model, _ = load_checkpoint(args.model, overrides=json.loads(args.model_opts))
    model.eval()
    L = args.length
    x, y = passkey(PasskeyConfig(vocab_size=model.cfg.vocab_size, seq_len=L, digits=4, depth=0.35), 1,
                   np.random.default_rng([L, 0]))
    start, q_at = int((x[0] == 0).nonzero()[0]), L - 4
    folder = Path(tempfile.mkdtemp(prefix="bmojo-recall-"))
    try:
        with Store.for_model(folder / "store", model, cfg=StoreConfig(search="exact")) as store:
            asked = {i: [] for i in store.layers}
            for i, ls in store.layers.items():  # record the queries the layer asks near the end
                ix = ls.index[0]

                def spy(q, qpos, window, k, exact=False, _ix=ix, _log=asked[i], _search=ix.search):
                    keep = qpos >= L - 256
                    if keep.any():
                        _log.append((q[keep].clone(), qpos[keep].clone()))
                    return _search(q, qpos, window, k, exact)
                ix.search = spy
            state = model.init_state(1, store=store)
            for s in range(0, q_at + 1, 4096):
                out = model(x[:, s:min(s + 4096, q_at + 1)], state, return_state=True)
                state = out.state
            logits = out.logits[:, -1]
            for _ in range(4):
                logits, state = model.step(logits.argmax(-1), state)
            rows = []
            for i, ls in store.layers.items():
                ix = ls.index[0]
                q, qpos = (torch.cat(t) for t in zip(*asked[i]))
                an = LayerIndex(ix.kv_heads, ix.head_dim, StoreConfig(search="ann", ann_threshold=0))
                t = time.perf_counter()
                an.add(ix.keys[:, :ix.n].transpose(0, 1), ix.pos[:ix.n], ix.ids[:ix.n])
                build = time.perf_counter() - t
                e, a = ix.search(q, qpos, model.cfg.window, args.k, exact=True)[0], an.search(q, qpos, model.cfg.window, args.k)[0]
                found = (e[..., :, None] == a[..., None, :]).any(-1) & (e >= 0)
                needle_ids = ix.ids[:ix.n][(ix.pos[:ix.n] >= start) & (ix.pos[:ix.n] <= start + 4)]
                is_needle = (e[..., None] == needle_ids).any(-1)
                row = {"layer": i, "entries": ix.n, "queries": int(q.shape[0]), "k": args.k,
                       "recall": float(found.sum() / (e >= 0).sum()),
                       "needle_in_exact_topk": int(is_needle.sum()),
                       "needle_recall": float((found & is_needle).sum() / max(1, int(is_needle.sum()))),
                       "build_s": build}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write(args.out or "benchmarks/results/store_recall_model.json",
          {"model": args.model, "model_opts": json.loads(args.model_opts), "length": L, "needle_at": start, "hnsw": {"M": HNSW_M, "efSearch": EF_SEARCH},
           "threads": args.threads, "machine": where, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
