"""The long-term store at a B'MOJO layer's edge: what a layer call sends to its store and what it reads back.

A layer calls these from one place per call, and passes what it reads to attention as one more key segment:
  admit      the entries its memory updates evicted (`StoreConfig.admit`: every pool loser, or only the entries
             that were in the memory), each readable from the start of the chunk after its update
  retrieve   the top-k store entries of every query (parallel mode: all queries at once, after `admit`; each
             query reads what was readable from its chunk's start, so a call reads exactly what block-by-block
             writing would have let it read, and calling it twice on one state changes nothing)
  retrieve_step           decoding: one query per sequence (one float32 CPU sequence goes to the C search)
  entries_from_evictions  training with `train_store_topk`: the store a fresh sequence would build, in RAM, with
                          gradients
"""
from __future__ import annotations

import torch


def admit(store, upd, keys, values, *, start: int, chunk: int, rotate=None) -> None:
    """Send the pool entries that `upd`'s updates evicted to `store` (a LayerStore).  The call's first chunk starts
    at position `start` (update u closes chunk start + u*chunk); src indexes keys/values (B, n, Hk, Dh).
    `rotate(keys (B, N, Hk, Dh), positions (B, N))`, when given, is applied to the keys before they are stored
    (memory_rope=edge stores them unrotated)."""
    lost, when = upd.pool, upd.evicted_at  # (B, N): the update that evicted each pool entry, -1 if none
    keep = when >= 0
    chunk_start = start + when.clamp(min=0) * chunk
    if store.store.cfg.admit == "memory":  # only entries that were in the memory (older than the update's chunk)
        keep = keep & (lost.pos < chunk_start)
    if not bool(keep.any()):
        return
    bi = torch.arange(keys.shape[0], device=keys.device)[:, None]
    k, v = keys[bi, lost.src.clamp(min=0)], values[bi, lost.src.clamp(min=0)]
    if rotate is not None:
        k = rotate(k, lost.pos.clamp(min=0))
    order = torch.where(keep, when, when.new_full((), 1 << 40)).argsort(dim=1, stable=True)  # update order
    for row in range(keys.shape[0]):
        sel = order[row][:int(keep[row].sum())]
        store.add(row, lost.pos[row][sel], k[row][sel], v[row][sel], left=chunk_start[row][sel] + chunk)


def _search(store, q, qpos, readable_from, window):
    """q (B, n, H, Dh) at positions qpos (n,) in chunks starting at readable_from (n,) -> per-query retrieved
    (keys, values (B, n, H, K, Dh), visible (B, n, H, K)), read from the store as it stands."""
    K = store.store.cfg.topk
    B, n, H, Dh = q.shape
    qc, last = q.detach().cpu(), int(qpos[-1]) - window
    qpos, readable_from = qpos.cpu(), readable_from.cpu()
    found = []
    for row in range(B):
        ix = store.index[row]
        if ix.n == 0 or ix.min_pos > last:
            found.append(None)  # nothing visible yet
            continue
        found.append(store.search(row, qc[row], qpos, window, K, readable_from=readable_from))
    if all(f is not None for f in found):  # the usual case: no zero padding
        ek, ev, evis = (torch.stack(t) if B > 1 else t[0][None] for t in zip(*found))
        return ek.to(q), ev.to(q), evis.to(q.device)
    ek = q.new_zeros(B, n, H, K, Dh)
    ev, evis = torch.zeros_like(ek), torch.zeros(B, n, H, K, dtype=torch.bool, device=q.device)
    for row, f in enumerate(found):
        if f is not None:
            ek[row], ev[row], evis[row] = (t.to(q.device) for t in f)
    return ek, ev, evis


def retrieve(store, q, *, start: int, window: int, chunk: int):
    """Parallel mode: q (B, T, H, Dh) at positions start .. start+T-1 -> (keys, values (B, T, H, K, Dh),
    visible (B, T, H, K)): each query's top-k among the entries at positions <= i - W readable from its chunk."""
    qpos = torch.arange(start, start + q.shape[1])
    return _search(store, q, qpos, qpos - qpos % chunk, window)


def retrieve_step(store, q, i: int, *, window: int, chunk: int):
    """Decoding: q (B, H, Dh) at position i -> the store's (keys, values (B, H, K, Dh), visible (B, H, K)).  One
    float32 sequence on the CPU (the usual decode) goes straight to the store's search, whose (1, H, K, ...)
    outputs are already this shape and dtype; anything else through the batched path."""
    ix, readable = store.index[0], torch.tensor([i - i % chunk])
    if q.shape[0] == 1 and q.dtype == torch.float32 and q.device.type == "cpu" and ix.n \
            and ix.min_pos <= i - window:
        return store.search(0, q.detach(), (i,), window, store.store.cfg.topk, readable_from=readable)
    return tuple(t[:, 0] for t in _search(store, q[:, None], torch.tensor([i]), readable, window))


def entries_from_evictions(q, table_k, table_v, upd, *, memory_size: int, chunk: int, window: int, topk: int):
    """Training (`train_store_topk`, a forward from position 0, no store attached): the store a fresh sequence
    builds, i.e. the entries lost by each memory update (`upd`: bmojo.ops.eidetic.EideticOut), searched exactly as
    `LayerIndex.search` does (query i of block b sees the losers of updates 0 .. b-1 at positions <= i - W; top-k
    per head by q.k), with gradients through the retrieved keys and values.  Equals attaching a fresh exact store
    (tested)."""
    B, T, H, Dh = q.shape
    M, C, W, K = memory_size, chunk, window, topk
    Hk, n = table_k.shape[2], table_k.shape[1]  # table: [M empty slots | the stream from position 0]
    G = H // Hk
    bi = torch.arange(B, device=q.device)[:, None]
    added = torch.full((B, n + 1), T, dtype=torch.long, device=q.device)  # the update that lost it (T: none)
    lost = upd.evicted_at >= 0
    added[bi, torch.where(lost, upd.pool.src, n)] = torch.where(lost, upd.evicted_at, T)  # others: scratch column
    added = added[:, :n]
    pos = torch.arange(n, device=q.device) - M
    kt = table_k.detach().permute(0, 2, 3, 1)  # (B, Hk, Dh, n)
    qg = q.detach().view(B, T, Hk, G, Dh).permute(0, 2, 1, 3, 4).reshape(B, Hk, T * G, Dh)
    top_i, top_ok = [], []
    rows = max(C, ((1 << 23) // max(1, B * H * n)) // C * C)  # score block ~32 MB
    with torch.no_grad():
        for a in range(0, T, rows):
            r = min(rows, T - a)
            s = (qg[:, :, a * G:(a + r) * G] @ kt).view(B, Hk, r, G, n)
            i = torch.arange(a, a + r, device=q.device)
            vis = (added[:, None, :] < (i // C)[None, :, None]) & (pos[None, None, :] <= (i - W)[None, :, None])
            s = s.masked_fill(~vis[:, None, :, None, :], float("-inf"))
            top = s.topk(min(K, n), dim=-1)
            top_i.append(top.indices.permute(0, 2, 1, 3, 4).reshape(B, r, H, -1))
            top_ok.append(top.values.permute(0, 2, 1, 3, 4).reshape(B, r, H, -1) > float("-inf"))
    idx, ok = torch.cat(top_i, 1), torch.cat(top_ok, 1)  # (B, T, H, K')
    kv_head = (torch.arange(H, device=q.device) // G)[None, None, :, None]
    ek, ev = table_k[bi[..., None, None], idx, kv_head], table_v[bi[..., None, None], idx, kv_head]
    if idx.shape[-1] < K:  # fewer entries than K: pad, as the index does
        pad = K - idx.shape[-1]
        ek, ev = (torch.cat([t, t.new_zeros(B, T, H, pad, Dh)], 3) for t in (ek, ev))
        ok = torch.cat([ok, ok.new_zeros(B, T, H, pad)], 3)
    return ek, ev, ok
