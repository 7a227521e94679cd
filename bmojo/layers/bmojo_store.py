"""The long-term store and the null key at a B'MOJO layer's edge: what a call admits to the store and what each query
reads back (bmojo.memory.layer_io), with memory_rope=edge's rotations, and the learned null key joined to those
per-query entries.  A mixin of `BMojoMixer` (bmojo.layers.bmojo), whose attributes it reads."""
from __future__ import annotations

import torch

from bmojo.layers.bmojo_state import EideticTable
from bmojo.memory import layer_io


class StoreReads:
    def _store_entries(self, q, state, t0, mem):
        """Per-query (keys, values, visible) from the long-term store, or None: the state's store (each query block
        reads it as it stood after the previous chunk), or in training with `train_store_topk` the store a fresh
        sequence's own evictions build."""
        W, C = self.window, self.chunk
        qpos = torch.arange(t0, t0 + q.shape[1], device=q.device)
        if mem is not None and state is not None and state.store is not None:
            self._admit(state.store, mem.upd, mem.table, t0 - t0 % C)
            return self._read_store(lambda qs: layer_io.retrieve(state.store, qs, start=t0, window=W, chunk=C),
                                    q, qpos[:, None])
        if mem is not None and state is None and self.training and self.train_store_topk > 0:
            table_k = mem.table.k
            if self.memory_rope == "edge":  # the table's keys unrotated, as the store would hold them
                table_pos = (torch.arange(table_k.shape[1], device=q.device) - self.memory_size).clamp(min=0)
                table_k = self._unrotate(table_k, table_pos)
            return self._read_store(lambda qs: layer_io.entries_from_evictions(
                qs, table_k, mem.table.v, mem.upd, memory_size=self.memory_size, chunk=C, window=W,
                topk=self.train_store_topk), q, qpos[:, None])
        return None

    def _read_store(self, search, q, qpos):
        """The store's (keys, values, visible) for queries q at positions qpos (shaped to broadcast against q's
        leading dims, minus heads).  With memory_rope=edge the store holds unrotated keys k0: a query at i reading an
        entry as if at its block's edge e = i - i mod C - W scores <R(i) q, R(e) k0> = <R(i - e) q, k0>, so the
        search runs with the query rotated back by e and attention gets the found keys rotated at e: the store is
        read at the same distances at any length, like the eidetic memory."""
        if self.memory_rope != "edge":
            return search(q)
        edge = qpos - qpos % self.chunk - self.window
        keys, values, vis = search(self._at_edge(q, edge[..., 0] if edge.dim() else edge, 0))
        return self._at_edge(keys, torch.zeros_like(edge), edge), values, vis

    def _with_null(self, extra, q):
        """The per-query entries (keys, values (..., H, K, Dh), visible (..., H, K)) with the learned null key joined
        as one more entry every query sees; q (B, [T,] H, Dh).  Unchanged without a null key."""
        if self.null_k is None:
            return extra
        lead = q.shape[:-1]  # (B, [T,] H)
        nk = self.null_k.to(q.dtype).expand(*lead, self.head_dim)[..., None, :]
        nv = self.null_v.to(q.dtype).expand(*lead, self.head_dim)[..., None, :]
        vis = torch.ones(*lead, 1, dtype=torch.bool, device=q.device)
        if extra is None:
            return nk, nv, vis
        keys, values, evis = extra
        return (torch.cat([keys, nk.to(keys.dtype)], -2), torch.cat([values, nv.to(values.dtype)], -2),
                torch.cat([evis, vis], -1))

    def _store_step(self, q, state):
        """The store's entries for the one query q (B, 1, H, Dh), shaped (B, 1, H, K, ...), or None."""
        if state.store is None:
            return None
        i, W, C = state.pos, self.window, self.chunk
        found = self._read_store(lambda qs: layer_io.retrieve_step(state.store, qs, i, window=W, chunk=C),
                                 q[:, 0], torch.tensor(i, device=q.device))
        return tuple(t[:, None] for t in found)

    def _admit(self, store, upd, table: EideticTable, start: int):
        """Send what the memory updates evicted to the long-term store (keys unrotated with memory_rope=edge)."""
        layer_io.admit(store, upd, table.k, table.v, start=start, chunk=self.chunk,
                       rotate=self._unrotate if self.memory_rope == "edge" else None)

    def _unrotate(self, k, pos):
        """Keys rotated at their own positions pos -> unrotated (as if at position 0)."""
        return self._at_edge(k, pos, 0)
