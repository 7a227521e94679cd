"""Search over one layer's stored keys for one sequence: exact (the reference) or approximate (faiss HNSW).

A query q (H heads, Dh) at position i retrieves, for each head h, the `topk` entries with the highest q_h . k
among entries of its kv head that are visible, i.e. at positions <= i - W (older than its raw window) and, when
the search names `readable_from`, readable from the query's chunk (an entry is readable from the start of the
chunk after the memory update that evicted it: a layer call admits its evictions first and then searches once
for all its queries, and a repeated call reads exactly what the first did).  A position is stored once.  The
logits are the attention logits up to the scale, so the top-k are the entries attention would weigh most.
The approximate index proposes candidates and the exact scores of those candidates decide, so the two agree
whenever the index's candidates contain the exact top-k (measured as recall by benchmarks/store_recall.py).

Exact search has two implementations that return the same entries: a PyTorch one (one matrix product per kv
head, then the top-k of the best blocks), used for query blocks and as the reference, and a C one for decoding
(bmojo.memory.kernel), which scans 8-bit codes of the keys with an error bound and re-scores the survivors.
"""
from __future__ import annotations

import functools

import torch

from bmojo.memory import kernel
from bmojo.memory.errors import StoreError


@functools.cache
def _faiss():
    """faiss (the `ann` extra), imported on first use (it is slow to import and most stores never need it)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


HNSW_M, EF_CONSTRUCTION, EF_SEARCH = 32, 64, 96
BLOCK = 64  # exact search takes the top-k of the best k blocks of BLOCK entries (each block's max) first
FAR = 1 << 62  # the position of an unused slot: never visible
FEW = 2  # searches of at most this many queries (decoding) go to the C kernel when it is available


def ann_available() -> bool:
    return _faiss() is not None


class LayerIndex:
    """Keys, positions (n,) and entry ids (n,) of one sequence in one layer, in RAM.  Keys are kept as
    (Hk, capacity, Dh): q . K for every entry is one matrix product, and one entry's key is one cache line."""

    def __init__(self, kv_heads: int, head_dim: int, cfg):
        self.kv_heads, self.head_dim, self.cfg = kv_heads, head_dim, cfg
        self.n = 0
        self.min_pos = None  # the oldest stored position: nothing is visible to a query before min_pos + W
        self.keys = torch.empty(kv_heads, 0, head_dim)
        self.pos = torch.empty(0, dtype=torch.long)
        self.ids = torch.empty(0, dtype=torch.long)
        self.left = torch.empty(0, dtype=torch.long)  # (n,) the first position that may read each entry
        self.max_left = -1
        self.known = torch.zeros(0, dtype=torch.bool)  # known[p]: position p is stored
        self.seen = torch.empty(0, dtype=torch.long)  # running max of pos: entries [0, j) are all visible to a
        # query whose limit is >= seen[j-1], so only a short recent suffix needs a visibility mask
        # for the C kernel (bmojo.memory.kernel): the keys as 8-bit codes (Hk, capacity / 8, ceil(Dh / 2), 8, 2),
        # a pair of dimensions of 8 entries side by side, and their scales (Hk, capacity / 8), one per block of 8
        # entries, k ~ scale * code; None without the kernel or once a key is not finite
        self.code = torch.empty(kv_heads, 0, (head_dim + 1) // 2, 8, 2, dtype=torch.int8) if kernel.available() \
            else None
        self.scale = torch.empty(kv_heads, 0)
        self._c = None  # the kernel's view of these tensors (kernel.Index), made when they change
        self._hint = None  # per query head, the slots the C search found last (where its next scan starts)
        self.ann = None  # one faiss index per kv head, once built
        if cfg.search == "ann" and _faiss() is None:
            raise StoreError("StoreConfig.search='ann' needs faiss: pip install 'bmojo[ann]' (faiss-cpu)")

    def fresh(self, pos: torch.Tensor) -> torch.Tensor:
        """pos (m,) -> bool (m,): the positions not stored yet (a position is stored once)."""
        out = torch.ones_like(pos, dtype=torch.bool)
        inside = pos < self.known.shape[0]
        out[inside] = ~self.known[pos[inside]]
        return out

    def add(self, k: torch.Tensor, pos: torch.Tensor, ids: torch.Tensor, left: torch.Tensor | None = None) -> None:
        """k (m, Hk, Dh) float32, pos (m,), ids (m,); left (m,) the first position that may read each entry
        (None: any, e.g. entries reopened from disk)."""
        m = k.shape[0]
        if m == 0:
            return
        left = torch.full((m,), -1, dtype=torch.long) if left is None else left.long()
        top = int(pos.max()) + 1
        if top > self.known.shape[0]:
            self.known = torch.cat([self.known, self.known.new_zeros(max(top, 2 * self.known.shape[0]) -
                                                                     self.known.shape[0])])
        self.known[pos] = True
        self.max_left = max(self.max_left, int(left.max()))
        need = self.n + m
        if need > self.keys.shape[1]:  # grow geometrically, in whole blocks
            cap = -(-max(need, 2 * self.keys.shape[1], 256) // BLOCK) * BLOCK
            keys = torch.zeros(self.kv_heads, cap, self.head_dim)
            keys[:, :self.n] = self.keys[:, :self.n]
            self.keys = keys
            self.pos = torch.cat([self.pos[:self.n], self.pos.new_full((cap - self.n,), FAR)])
            self.ids, self.seen, self.left = (torch.cat([t[:self.n], t.new_empty(cap - self.n)])
                                              for t in (self.ids, self.seen, self.left))
            if self.code is not None:
                code = self.code.new_zeros(self.kv_heads, cap // 8, *self.code.shape[2:])
                code[:, :self.code.shape[1]] = self.code
                self.code, self.scale = code, torch.cat([self.scale, self.scale.new_zeros(
                    self.kv_heads, cap // 8 - self.scale.shape[1])], 1)
        self.keys[:, self.n:need] = k.transpose(0, 1)
        if self.code is not None:
            if bool(k.isfinite().all()):
                self._quantize(self.n // 8, -(-need // 8))
            else:
                self.code = None
        self.pos[self.n:need], self.ids[self.n:need], self.left[self.n:need] = pos, ids, left
        seen = pos.cummax(0).values
        self.seen[self.n:need] = seen.clamp(min=int(self.seen[self.n - 1])) if self.n else seen
        self.n = need
        self._c = None
        low = int(pos.min())
        self.min_pos = low if self.min_pos is None else min(self.min_pos, low)
        if self.ann is not None:
            for g, ix in enumerate(self.ann):
                ix.add(k[:, g].contiguous().numpy())
        elif self._wants_ann():
            self._build_ann()

    def _quantize(self, b0: int, b1: int) -> None:
        """8-bit codes of blocks b0 .. b1-1 (8 entries each) from the float32 keys; a block that gained entries is
        coded again, its scale being the largest |k_d| of all its entries / 127 (unused slots are zero)."""
        kb = self.keys[:, 8 * b0:8 * b1].reshape(self.kv_heads, b1 - b0, 8, self.head_dim)
        scale = kb.abs().amax(dim=(2, 3)) / 127  # (Hk, blocks)
        code = torch.where(scale[..., None, None] > 0, kb / scale[..., None, None], 0).round().clamp(-127, 127)
        code = torch.nn.functional.pad(code, (0, self.head_dim % 2))  # an odd width gets a zero dimension
        self.code[:, b0:b1] = code.unflatten(-1, (-1, 2)).transpose(2, 3).to(torch.int8)  # (Hk, blocks, P, 8, 2)
        self.scale[:, b0:b1] = scale

    def _wants_ann(self) -> bool:
        return self.cfg.search in ("ann", "auto") and self.n >= self.cfg.ann_threshold and _faiss() is not None

    def _build_ann(self) -> None:
        self.ann = []
        for g in range(self.kv_heads):
            ix = _faiss().IndexHNSWFlat(self.head_dim, HNSW_M, _faiss().METRIC_INNER_PRODUCT)
            ix.hnsw.efConstruction, ix.hnsw.efSearch = EF_CONSTRUCTION, EF_SEARCH
            ix.add(self.keys[g, :self.n].contiguous().numpy())
            self.ann.append(ix)

    def nbytes(self) -> int:
        n = self.keys.numel() * 4 + (self.pos.numel() + self.ids.numel() + self.seen.numel() + self.left.numel()) * 8
        n += self.known.numel()
        if self.code is not None:
            n += self.code.numel() + self.scale.numel() * 4
        if self.ann is not None:  # vectors + about 2*M links of 4 bytes per entry
            n += sum(ix.ntotal * (self.head_dim * 4 + 2 * HNSW_M * 4) for ix in self.ann)
        return n

    def needs_left_mask(self, readable_from) -> bool:
        """Whether some entry is not yet readable by the earliest query (only after a repeated or rewound call)."""
        return readable_from is not None and self.max_left > int(torch.as_tensor(readable_from).min())

    @torch.no_grad()
    def search(self, q: torch.Tensor, qpos: torch.Tensor, window: int, k: int, exact: bool = False,
               readable_from=None):
        """q (n, H, Dh) float, qpos (n,) (a tensor or ints), readable_from (n,) or None -> (ids (n, H, k) entry ids,
        -1 where there is none; keys (n, H, k, Dh); logits q.k (n, H, k), -inf where there is none)."""
        n, H, Dh = q.shape
        masked = self.needs_left_mask(readable_from)
        lmask = torch.as_tensor(readable_from)[:, None, None, None] if masked else None
        if masked:
            exact = True  # the rare case: the plain matrix product, masked
        elif self.searches_in_c(n):
            found = self.search_c(q, qpos, window, k)
            if found is not None:
                return found[:3]
        G = H // self.kv_heads
        qf = q.float().view(n, self.kv_heads, G, Dh)
        limit = (torch.as_tensor(qpos) - window)[:, None, None, None]  # visible: pos <= limit
        if self.ann is not None and not exact:
            return self._search_ann(qf, limit, k)
        out_s, out_i = [], []
        nb = -(-self.n // BLOCK) * BLOCK  # whole blocks: the unused slots after n are never visible (FAR)
        keys_t = self.keys[:, :nb].transpose(1, 2)  # (Hk, Dh, nb), a transposed view (BLAS reads it as is)
        step = max(1, (1 << 22) // max(1, nb * H))  # bound the (rows, H, nb) score block to ~16 MB
        for a in range(0, n, step):
            qa = qf[a:a + step]  # (r, Hk, G, Dh)
            r = qa.shape[0]
            s = torch.bmm(qa.permute(1, 0, 2, 3).reshape(self.kv_heads, r * G, Dh), keys_t)  # (Hk, r*G, nb)
            s = s.view(self.kv_heads, r, G, nb).transpose(0, 1)  # (r, Hk, G, nb)
            lim = limit[a:a + step]
            v = self.visible_prefix(int(lim.min()))
            if v < nb:  # the entries after the all-visible prefix: mask those a query cannot see yet
                s[..., v:].masked_fill_(self.pos[v:nb] > lim, float("-inf"))
            if masked:  # entries evicted at or after this query's chunk
                s.masked_fill_(self.left[:nb] > lmask[a:a + step], float("-inf"))
            values, indices = _topk(s, min(k, self.n))
            out_s.append(values)
            out_i.append(indices)
        return self._gather(torch.cat(out_s), torch.cat(out_i), k)

    def searches_in_c(self, n: int) -> bool:
        """Whether an exact search for n queries runs the C kernel (decoding, once it is built)."""
        return self.code is not None and self.ann is None and n <= FEW

    def search_c(self, q: torch.Tensor, qpos: torch.Tensor, window: int, k: int, values=None, scores=True):
        """The C search (see `search` and bmojo.memory.kernel.search, which also reads `values`) ->
        (ids, keys, logits or None without `scores`, values or None, how many found ids have no value read);
        None when q is not finite (search with PyTorch then)."""
        if self._c is None:
            self._c = kernel.Index(self.code.data_ptr(), self.scale.data_ptr(), self.keys.data_ptr(),
                                   self.pos.data_ptr(), self.seen.data_ptr(), self.ids.data_ptr(), self.n,
                                   self.keys.shape[1], self.kv_heads, 1, self.head_dim, 1)
            self._c.hint = self._hint.data_ptr() if self._hint is not None else None
        if self._hint is None or self._hint.shape != (q.shape[1], k):  # each head's last top-k (slots)
            self._hint = torch.full((q.shape[1], k), -1, dtype=torch.long)
            self._c.hint = self._hint.data_ptr()
        limits = [int(p) - window for p in (qpos.tolist() if isinstance(qpos, torch.Tensor) else qpos)]
        return kernel.search(q.float().contiguous(), limits, self._c, k, values, scores)

    def visible_prefix(self, limit: int) -> int:
        """How many of the first entries (in the order added) are all at positions <= limit."""
        return int(torch.searchsorted(self.seen[:self.n], limit, right=True))

    def _search_ann(self, qf, limit, k):
        n, Hk, G, Dh = qf.shape
        # entries not yet visible to the earliest query may fill candidate slots: ask for that many more
        extra = self.n - self.visible_prefix(int(limit.min()))
        kk = min(self.n, k + extra)
        cand = torch.empty(n, Hk, G, kk, dtype=torch.long)
        for g, ix in enumerate(self.ann):
            _, I = ix.search(qf[:, g].reshape(n * G, Dh).contiguous().numpy(), kk)
            cand[:, g] = torch.from_numpy(I).view(n, G, kk)
        valid = cand >= 0
        cand = cand.clamp(min=0)
        ck = self.keys[torch.arange(Hk)[None, :, None, None], cand]  # (n, Hk, G, kk, Dh)
        s = torch.einsum("qkgd,qkgcd->qkgc", qf, ck)
        s = s.masked_fill(~valid | (self.pos[cand] > limit), float("-inf"))
        top = s.topk(min(k, kk), dim=-1)
        return self._gather(top.values, cand.gather(-1, top.indices), k)

    def _gather(self, scores, local, k):
        """scores, local (n, Hk, G, k') -> padded (ids, keys, logits) of (n, H, k[, Dh])."""
        n, Hk, G, kk = scores.shape
        ok = scores > float("-inf")
        keys = self.keys[torch.arange(Hk)[None, :, None, None], local.clamp(min=0)]  # (n,Hk,G,k',Dh)
        ids = torch.where(ok, self.ids[local.clamp(min=0)], torch.full_like(local, -1))
        if kk < k:  # fewer entries than k: pad
            pad = k - kk
            ids = torch.cat([ids, ids.new_full((n, Hk, G, pad), -1)], -1)
            scores = torch.cat([scores, scores.new_full((n, Hk, G, pad), float("-inf"))], -1)
            keys = torch.cat([keys, keys.new_zeros(n, Hk, G, pad, self.head_dim)], -2)
        H = Hk * G
        return ids.view(n, H, k), keys.view(n, H, k, self.head_dim), scores.view(n, H, k)


def _topk(s: torch.Tensor, k: int):
    """Top-k along the last axis of s (..., nb), nb a multiple of BLOCK: the k blocks with the highest maximum
    hold every one of the top k (each of those is >= the k-th best, so at most k blocks reach it), so the
    top-k of those k * BLOCK candidates is exact, and much cheaper than sorting a long row."""
    nb = s.shape[-1]
    if nb < 4 * k * BLOCK:  # short rows: one sort is as cheap
        return s.topk(k, dim=-1)
    lead = s.shape[:-1]
    blocks = s.view(*lead, nb // BLOCK, BLOCK).amax(-1).topk(k, dim=-1).indices  # (..., k)
    cand = (blocks[..., None] * BLOCK + torch.arange(BLOCK)).flatten(-2)  # (..., k * BLOCK)
    top = s.gather(-1, cand).topk(k, dim=-1)
    return top.values, cand.gather(-1, top.indices)
