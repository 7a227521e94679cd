"""The B'MOJO mixer's long-term store reads and writes (bmojo.memory), kept apart from the mixer's own maths.

`StoreReads` is mixed into BMojoMixer and uses its window, chunk, memory_size and train_store_topk:
  _store_add        the losers of a memory update go to the store (all, or with admit="memory" those that were in
                    the memory)
  _store_search     a block of queries reads the store as it stands (the batched path)
  _store_step       decoding: one query per sequence (one float32 CPU sequence goes straight to the C search)
  _store_read       parallel mode: query block b reads the store after the updates before it
  _store_from_evictions  training (`train_store_topk`): the store a fresh sequence builds, with gradients
"""
from __future__ import annotations

import torch


class StoreReads:
    def _store_add(self, store, ev, update, keys, values, chunk_start):
        """Send the pool entries of `ev` (bmojo.ops.eidetic.EideticOut) that lost update `update`, of the chunk
        starting at position `chunk_start` (src indexing keys/values (B, n, Hk, Dh)), to the store: all of them, or
        with StoreConfig.admit="memory" those that were in the memory (older than the chunk, whose own tokens are
        the update's candidates)."""
        lost = ev.pool
        bi = torch.arange(keys.shape[0], device=keys.device)[:, None]
        k, v = keys[bi, lost.src.clamp(min=0)], values[bi, lost.src.clamp(min=0)]
        keep = ev.evicted_at == update
        if store.store.cfg.admit == "memory":
            keep = keep & (lost.pos < chunk_start)
        for row in range(keys.shape[0]):
            real = keep[row]
            store.add(row, lost.pos[row][real], k[row][real], v[row][real])

    def _store_search(self, store, q, qpos):
        """q (B, n, H, Dh) at positions qpos (n,) (a tensor, or ints) -> per-query retrieved (keys, values (B, n, H,
        K, Dh), visible (B, n, H, K)), read from the store as it stands."""
        K = store.store.cfg.topk
        B, n, H, Dh = q.shape
        qc, last = q.detach().cpu(), int(qpos[-1]) - self.window
        if isinstance(qpos, torch.Tensor):
            qpos = qpos.cpu()
        found = []
        for row in range(B):
            ix = store.index[row]
            if ix.n == 0 or ix.min_pos > last:
                found.append(None)  # nothing visible yet
                continue
            found.append(store.search(row, qc[row], qpos, self.window, K))
        if all(f is not None for f in found):  # the usual case: no zero padding
            ek, ev, evis = (torch.stack(t) if B > 1 else t[0][None] for t in zip(*found))
            return ek.to(q), ev.to(q), evis.to(q.device)
        ek = q.new_zeros(B, n, H, K, Dh)
        ev, evis = torch.zeros_like(ek), torch.zeros(B, n, H, K, dtype=torch.bool, device=q.device)
        for row, f in enumerate(found):
            if f is not None:
                ek[row], ev[row], evis[row] = (t.to(q.device) for t in f)
        return ek, ev, evis

    def _store_step(self, store, q, i):
        """Decoding: q (B, H, Dh) at position i -> the store's (keys, values (B, H, K, Dh), visible (B, H, K)).  One
        float32 sequence on the CPU (the usual decode) goes straight to the store's search, whose (1, H, K, ...)
        outputs are already this shape and dtype; anything else through _store_search."""
        ix = store.index[0]
        if q.shape[0] == 1 and q.dtype == torch.float32 and q.device.type == "cpu" and ix.n \
                and ix.min_pos <= i - self.window:
            return store.search(0, q.detach(), (i,), self.window, store.store.cfg.topk)
        return tuple(t[:, 0] for t in self._store_search(store, q[:, None], (i,)))

    def _store_read(self, store, q, t0, ev, table_k, table_v):
        """Parallel mode: query block b reads the store after the updates before it; the updates' losers are
        added as the blocks advance (and those of a final complete update after the last block)."""
        B, T = q.shape[:2]
        C = self.chunk
        a0 = t0 - t0 % C
        parts = []
        nb = ev.blocks.pos.shape[1]
        for b in range(nb):
            if b > 0:
                self._store_add(store, ev, b - 1, table_k, table_v, a0 + (b - 1) * C)
            lo, hi = max(a0 + b * C, t0), min(a0 + (b + 1) * C, t0 + T)
            parts.append(self._store_search(store, q[:, lo - t0:hi - t0], torch.arange(lo, hi)))
        if (t0 + T) % C == 0 and nb:  # the last chunk completed: its update's losers go in too
            self._store_add(store, ev, nb - 1, table_k, table_v, a0 + (nb - 1) * C)
        return tuple(torch.cat(x, 1) for x in zip(*parts))

    def _store_from_evictions(self, q, table_k, table_v, ev):
        """Training (`train_store_topk`, a forward from position 0): the store a fresh sequence builds, i.e. the
        entries lost by each memory update, searched exactly as `LayerIndex.search` does (query i of block b
        sees the losers of updates 0 .. b-1 at positions <= i - W; top-k per head by q.k), with gradients
        through the retrieved keys and values.  Equals attaching a fresh exact store (tested)."""
        B, T, H, Dh = q.shape
        M, C, W, K = self.memory_size, self.chunk, self.window, self.train_store_topk
        Hk, n = table_k.shape[2], table_k.shape[1]  # table: [M empty slots | the stream from position 0]
        G = H // Hk
        bi = torch.arange(B, device=q.device)[:, None]
        added = torch.full((B, n + 1), T, dtype=torch.long, device=q.device)  # the update that lost it (T: none)
        lost = ev.evicted_at >= 0
        added[bi, torch.where(lost, ev.pool.src, n)] = torch.where(lost, ev.evicted_at, T)  # others: scratch column
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
