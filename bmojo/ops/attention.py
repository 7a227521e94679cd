"""Attention over [eidetic | fading | raw window | store] under one softmax, in parallel and in decode form.

A query at absolute position i sees
  - raw keys j with i - W < j <= i                       (the sliding window, W keys including itself)
  - fading keys j with i - 2W < j <= i - W              (SSM outputs, projected to keys/values)
  - eidetic entries of its query block with 0 <= pos <= i - W  (the memory as it stood before the block)
  - its own per-head entries retrieved from the long-term store (bmojo.memory), when given
Query blocks are aligned to absolute multiples of `chunk` (C <= W).

Every op takes the same typed `Segments` (what is read) beside q (B, T, H, Dh), H a multiple of Hk (grouped-query
heads: kv head g serves q heads g*H/Hk ...):
  window_attention_ref(q, segs, window, *, chunk=None, q_start=0, scale=None)   one softmax per query (reference)
  window_attention(...)          the chunked fast path, linear in T (one SDPA call for every block)
  window_attention_shares(...)   the chunked path with an explicit softmax, also returning each segment's share
  window_attention_fused(...)    flex_attention on CUDA for whole sequences, else the chunked path
  window_attention_step(...)     decode: one query (T = 1) whose raw and fading segments are ring buffers
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bmojo.ops import flex


@dataclass
class Stream:
    """Keys and values at consecutive positions: k, v (B, S, Hk, Dh) hold positions start .. start+S-1 (a parallel
    call's raw keys must cover [max(0, q_start-W+1), q_start+T), its fading keys [max(0, q_start-2W+1), q_start+T)).
    bias, optional: a scalar tensor added to the logit of every key of the segment."""

    k: torch.Tensor
    v: torch.Tensor
    start: int = 0
    bias: torch.Tensor | None = None


@dataclass
class Ring:
    """A decode state's ring buffer of keys and values: k, v (B, span, Hk, Dh), slot p % span holding position p,
    written up to the query's position (rows never written are hidden).  bias: as in `Stream`."""

    k: torch.Tensor
    v: torch.Tensor
    bias: torch.Tensor | None = None


@dataclass
class BlockEntries:
    """The eidetic entries each query block reads: k, v (B, nb, M, Hk, Dh), pos (B, nb, M) (-1 = empty slot), with
    nb = num_blocks(q_start, T, chunk) (1 in decode); bias (B, nb, M), optional, is added to their logits (the
    selection gate's log-sigmoid)."""

    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor
    bias: torch.Tensor | None = None


@dataclass
class QueryEntries:
    """Entries each query reads on its own (retrieved from the long-term store, or the learned null key):
    k, v (B, T, H, K, Dh), visible (B, T, H, K) bool."""

    k: torch.Tensor
    v: torch.Tensor
    visible: torch.Tensor


@dataclass
class Segments:
    """What one window attention reads: the raw window, and optionally the fading segment, the eidetic entries and
    per-query store entries (a Stream for raw and fading in a parallel call, a Ring in decode)."""

    raw: Stream | Ring
    fading: Stream | Ring | None = None
    memory: BlockEntries | None = None
    store: QueryEntries | None = None

    @property
    def biased(self) -> bool:
        return (self.memory is not None and self.memory.bias is not None) or \
            (self.fading is not None and self.fading.bias is not None)


def num_blocks(q_start: int, T: int, chunk: int) -> int:
    """Query blocks aligned to multiples of chunk that cover positions q_start .. q_start+T-1."""
    return (q_start % chunk + T + chunk - 1) // chunk


def _neg(dtype):
    return torch.finfo(dtype).min  # finite, so fully masked (discarded) rows never produce NaN


def _scale(q, scale):
    return scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])


def attend(q, keys, values, visible, scale, store=None, bias=None):
    """One softmax for a few queries over an explicit key set.
    q (B, H, Dh); keys, values (B, S, Hk, Dh); visible (B, S) bool -> (B, H, Dh).
    `store` = (keys, values (B, H, K, Dh), visible (B, H, K)): per-head entries that join the same softmax.
    `bias` (B, S) float is added to the keys' logits."""
    Bsz, H, Dh = q.shape
    Hk = keys.shape[2]
    if store is None:
        s = torch.einsum("bkgd,bskd->bkgs", q.view(Bsz, Hk, H // Hk, Dh), keys) * scale
        if bias is not None:
            s = s + bias[:, None, None, :].to(s.dtype)
        s = s.masked_fill(~visible[:, None, None, :], _neg(s.dtype))
        o = torch.einsum("bkgs,bskd->bkgd", s.softmax(-1), values)
        return o.reshape(Bsz, H, values.shape[-1])
    ek, ev, evis = store  # per query head: join them as each head's own keys, one product per side
    G = H // Hk
    k_all = torch.cat([keys.transpose(1, 2).repeat_interleave(G, 1), ek], 2)  # (B, H, S + K, Dh)
    v_all = torch.cat([values.transpose(1, 2).repeat_interleave(G, 1), ev], 2)
    vis = torch.cat([visible[:, None].expand(Bsz, H, -1), evis], 2)
    s = torch.matmul(k_all, q[..., None])[..., 0].mul_(scale)
    if bias is not None:
        s = s + F.pad(bias, (0, ek.shape[2]))[:, None].to(s.dtype)
    s = s.masked_fill_(~vis, _neg(q.dtype))
    return torch.matmul(s.softmax(-1)[:, :, None], v_all)[:, :, 0]


def _query_store(store: QueryEntries | None, t: int):
    return None if store is None else (store.k[:, t], store.v[:, t], store.visible[:, t])


def window_attention_ref(q, segs: Segments, window, *, chunk=None, q_start=0, scale=None):
    """Sequential reference: gathers each query's key set explicitly, one softmax per query."""
    Bsz, T, H, Dh = q.shape
    W, C = window, (chunk or window)
    b0 = q_start // C
    outs = []
    for t, q_t in enumerate(q.unbind(1)):
        i = q_start + t
        keys, vals, vis, bias = [], [], [], []
        if segs.memory is not None:
            m, b = segs.memory, i // C - b0
            keys.append(m.k[:, b]); vals.append(m.v[:, b])
            vis.append((m.pos[:, b] >= 0) & (m.pos[:, b] <= i - W))
            bias.append(m.bias[:, b] if m.bias is not None else q.new_zeros(m.pos[:, b].shape))
        for s, lo, hi in ((segs.fading, i - 2 * W + 1, i - W), (segs.raw, i - W + 1, i)):  # inclusive
            lo = max(0, lo, s.start) if s is not None else 0
            if s is None or hi < lo:
                continue
            keys.append(s.k[:, lo - s.start:hi - s.start + 1]); vals.append(s.v[:, lo - s.start:hi - s.start + 1])
            vis.append(torch.ones(Bsz, hi - lo + 1, dtype=torch.bool, device=q.device))
            bias.append(q.new_zeros(Bsz, hi - lo + 1) + (s.bias if s.bias is not None else 0.0))
        b_all = torch.cat(bias, 1) if segs.biased else None
        outs.append(attend(q_t, torch.cat(keys, 1), torch.cat(vals, 1), torch.cat(vis, 1), _scale(q, scale),
                           _query_store(segs.store, t), b_all))
    return torch.stack(outs, dim=1) if outs else q.new_zeros(q.shape[:3] + segs.raw.v.shape[3:])


_RING_VISIBLE: dict = {}


def _ring_visible(i: int, span: int, lo: int, device) -> torch.Tensor:
    """(span,) bool for query i over a ring written up to position i (it holds positions i - span < p <= i): the
    slots with 0 <= p <= i - lo.  Once the ring is full it depends on i mod span only, so those patterns are made
    once (in eager mode: a compiled step computes them, as a cache keyed by position would make it recompile at
    every position)."""
    full = i >= span - 1 and not torch.compiler.is_compiling()
    key = (i % span, span, lo, device)
    if full and key in _RING_VISIBLE:
        return _RING_VISIBLE[key]
    s = torch.arange(span, device=device)
    p = i - ((i - s) % span)  # the position each slot holds (negative: never written)
    vis = (p >= 0) & (p <= i - lo)
    if full:
        _RING_VISIBLE[key] = vis
    return vis


def window_attention_step(q, segs: Segments, window, *, chunk=None, q_start=0, scale=None):
    """Decode: one query q (B, 1, H, Dh) at position q_start = i, the segments' raw and fading parts Rings (spans W
    and 2W, position i already written), the memory the query's block reads (nb = 1), the store entries (T = 1)
    -> (B, 1, H, Dh): the same result as `window_attention_ref` gives that query (`chunk` is unused: the memory is
    the block's already)."""
    B, i, W = q.shape[0], q_start, window
    keys, vals, vis, bias = [], [], [], []
    if segs.memory is not None:
        m = segs.memory
        keys.append(m.k[:, 0]); vals.append(m.v[:, 0])
        vis.append((m.pos[:, 0] >= 0) & (m.pos[:, 0] <= i - W))
        bias.append(m.bias[:, 0] if m.bias is not None else q.new_zeros(m.pos[:, 0].shape))
    for ring, lo in ((segs.fading, W), (segs.raw, 0)):  # spans 2W and W: distances [W, 2W) and [0, W)
        if ring is None:
            continue
        span = ring.k.shape[1]
        keys.append(ring.k); vals.append(ring.v)
        vis.append(_ring_visible(i, span, lo, q.device).expand(B, -1))
        if segs.biased:
            bias.append(q.new_zeros(B, span) + (ring.bias if ring.bias is not None else 0.0))
    b_all = torch.cat(bias, 1) if segs.biased else None
    o = attend(q[:, 0], torch.cat(keys, 1), torch.cat(vals, 1), torch.cat(vis, 1), _scale(q, scale),
               _query_store(segs.store, 0), b_all)
    return o[:, None]


def _frame_blocks(t, t_start, first, length, block, step):
    """Place stream t (B, Tt, Hk, Dh) starting at position t_start into a frame of `length` positions
    starting at `first` (zeros where t has nothing), then cut overlapping blocks.
    Returns blocks (B, nb, Hk, block, Dh) and valid (nb, block) bool."""
    a = min(max(first, t_start), first + length)  # overlap [a, b) of the stream and the frame, in positions
    b = max(a, min(first + length, t_start + t.shape[1]))
    part = t[:, a - t_start:b - t_start] if b > a else t[:, :0]
    framed = F.pad(part, (0, 0, 0, 0, a - first, first + length - b))  # (B, length, Hk, Dh)
    valid = torch.zeros(length, dtype=torch.bool, device=t.device)
    valid[a - first:b - first] = True
    nb = (length - block) // step + 1
    idx = (torch.arange(nb, device=t.device)[:, None] * step + torch.arange(block, device=t.device)).flatten()
    blocks = framed.index_select(1, idx).view(t.shape[0], nb, block, *t.shape[2:])  # (B, nb, block, Hk, Dh)
    return blocks.transpose(2, 3), valid[idx].view(nb, block)


def _key_blocks(q, segs: Segments, W, C, a0, nb):
    """Each query block's keys [memory (M) | fading (C+W-1) | raw (C+W-1)] as per-segment lists: keys and values
    (B, nb, Hk, width, Dh), visibility (B or 1, nb, 1, 1, C, width), logit bias (B or 1, nb, width), and the
    segments' {name: width}."""
    Tq, Kb = nb * C, C + W - 1
    cq = torch.arange(C, device=q.device)[:, None]
    mk = torch.arange(Kb, device=q.device)[None, :]
    band = (mk >= cq) & (mk < cq + W)  # (C, Kb): query c sees block column m iff c <= m < c + W
    keys, vals, vis, bias, segs_w = [], [], [], [], {}
    if segs.memory is not None:
        m = segs.memory
        qpos = a0 + torch.arange(Tq, device=q.device).view(nb, C)  # (nb, C)
        mp = m.pos[:, :, None, :]  # (B, nb, 1, M)
        vis.append(((mp >= 0) & (mp <= qpos[None, :, :, None] - W))[:, :, None, None])  # (B, nb, 1, 1, C, M)
        keys.append(m.k.transpose(2, 3))  # (B, nb, Hk, M, Dh)
        vals.append(m.v.transpose(2, 3))
        segs_w["eidetic"] = m.k.shape[2]
        bias.append(m.bias.to(q.dtype) if m.bias is not None else q.new_zeros(1, nb, m.k.shape[2]))
    for name, s, first in (("fading", segs.fading, a0 - 2 * W + 1), ("raw", segs.raw, a0 - W + 1)):
        if s is None:
            continue
        kb, valid = _frame_blocks(s.k, s.start, first, Tq + W - 1, Kb, C)
        vb, _ = _frame_blocks(s.v, s.start, first, Tq + W - 1, Kb, C)
        keys.append(kb); vals.append(vb)
        vis.append((band[None] & valid[:, None, :])[None, :, None, None])  # (1, nb, 1, 1, C, Kb)
        segs_w[name] = Kb
        bias.append(q.new_zeros(1, nb, Kb) + (s.bias.to(q.dtype) if s.bias is not None else 0.0))
    return keys, vals, vis, bias, segs_w


def _window_blocks(q, segs: Segments, window, chunk, q_start):
    """The chunked path's tensors: queries in aligned blocks qb (B*nb, Hk, G*C, Dh), their key and value sets
    (B*nb, Hk, S, Dh) laid out [memory (M) | fading (C+W-1) | raw (C+W-1) | store (G*C*K)], the visibility mask
    (B*nb, 1 or Hk, G*C, S), the sizes of those key segments, and how to undo the blocking (see `_unblock`).  A
    query sees only its own K store entries: they join its block's key set under a mask.  With a logit bias,
    `mask` is instead the float mask of SDPA: the bias on the memory and fading columns, 0 on the other visible
    keys, -inf on the hidden ones."""
    Bsz, T, H, Dh = q.shape
    Hk = segs.raw.k.shape[2]
    G, W, C = H // Hk, window, (chunk or window)
    a0 = q_start - q_start % C
    r, nb = q_start - a0, num_blocks(q_start, T, C)
    qp = F.pad(q, (0, 0, 0, 0, r, nb * C - r - T))  # queries in aligned blocks: (B, nb, Hk, G*C, Dh)
    qb = qp.view(Bsz, nb, C, Hk, G, Dh).permute(0, 1, 3, 4, 2, 5).reshape(Bsz, nb, Hk, G * C, Dh)
    keys, vals, vis, bias, segs_w = _key_blocks(q, segs, W, C, a0, nb)
    # Every kept query sees its own raw key; a fully masked row (none is expected, a padded query at most) is
    # opened to all keys, so no backend can return NaN there: its output is discarded and its gradient is 0.
    shape = (Bsz, nb, Hk, G, C, H, r, T)
    kcat = torch.cat(keys, dim=3).flatten(0, 1)  # (B*nb, Hk, S, Dh)
    vcat = torch.cat(vals, dim=3).flatten(0, 1)
    S = kcat.shape[2]
    mask = torch.cat([m.expand(Bsz, nb, 1, 1, C, m.shape[-1]) for m in vis], dim=-1)  # (B, nb, 1, 1, C, S)
    mask = mask.expand(Bsz, nb, 1, G, C, S).reshape(Bsz * nb, 1, G * C, S)
    if segs.store is not None:  # the store: block row (g, c) sees only its own K entries
        st = segs.store
        ek, ev, evis = (_block_rows(t, shape) for t in (st.k, st.v, st.visible))  # (B*nb, Hk, G*C, K[, Dh])
        own = torch.eye(G * C, dtype=torch.bool, device=q.device)[None, None, :, :, None] & evis[:, :, None]
        kcat = torch.cat([kcat, ek.flatten(2, 3)], 2)
        vcat = torch.cat([vcat, ev.flatten(2, 3)], 2)
        mask = torch.cat([mask.expand(-1, Hk, -1, -1), own.flatten(3, 4)], -1)  # (B*nb, Hk, G*C, S + G*C*K)
        segs_w["store"] = G * C * evis.shape[-1]
    mask = mask | ~mask.any(-1, keepdim=True)
    if segs.biased:  # additive: the segments' logit biases, same visibility
        b = torch.cat([t.expand(Bsz, nb, t.shape[-1]) for t in bias], -1).flatten(0, 1)[:, None, None, :]
        mask = F.pad(b, (0, mask.shape[-1] - b.shape[-1])).expand(mask.shape).masked_fill(~mask, float("-inf"))
    return qb.flatten(0, 1), kcat, vcat, mask, segs_w, shape


def _unblock(x, shape):
    """(B*nb, Hk, G*C, D) per-block rows -> (B, T, H, D) per query."""
    Bsz, nb, Hk, G, C, H, r, T = shape
    D = x.shape[-1]
    return x.reshape(Bsz, nb, Hk, G, C, D).permute(0, 1, 4, 2, 3, 5).reshape(Bsz, nb * C, H, D)[:, r:r + T]


def _block_rows(x, shape):
    """Per-query tensors (B, T, H, ...) -> the blocked row layout of `_window_blocks` (B*nb, Hk, G*C, ...)."""
    Bsz, nb, Hk, G, C, H, r, T = shape
    tail = x.shape[3:]
    pad = x.new_zeros(Bsz, nb * C, *x.shape[2:])
    pad[:, r:r + T] = x
    x = pad.view(Bsz, nb, C, Hk, G, *tail).movedim(2, 4)  # (B, nb, Hk, G, C, ...)
    return x.reshape(Bsz * nb, Hk, G * C, *tail)


def window_attention(q, segs: Segments, window, *, chunk=None, q_start=0, scale=None):
    """Chunked fast path, linear in T: each block of C queries reads C+W-1 raw keys, C+W-1 fading keys, its M
    memory entries and each query's own store entries, in one SDPA call for all blocks (the CPU kernel fuses the
    mask, the softmax and both products, forward and backward).  Same signature and result as window_attention_ref."""
    qb, kcat, vcat, mask, _, shape = _window_blocks(q, segs, window, chunk, q_start)
    return _unblock(F.scaled_dot_product_attention(qb, kcat, vcat, attn_mask=mask, scale=_scale(q, scale)), shape)


def window_attention_shares(q, segs: Segments, window, *, chunk=None, q_start=0, scale=None):
    """`window_attention` with an explicit softmax, also returning where each query's attention went:
    (output (B, T, H, Dv), shares {"eidetic" | "fading" | "raw" | "store": (B, T, H)}), the shares of a query
    summing to 1 (for inspection: `bmojo inspect`)."""
    qb, kcat, vcat, mask, segs_w, shape = _window_blocks(q, segs, window, chunk, q_start)
    s = qb @ kcat.transpose(-1, -2) * _scale(q, scale)
    p = (s + mask if mask.is_floating_point() else s.masked_fill(~mask, _neg(q.dtype))).softmax(-1)
    o = p @ vcat
    shares, start = {}, 0
    for name, n in segs_w.items():
        shares[name] = _unblock(p[..., start:start + n].sum(-1, keepdim=True), shape)[..., 0]
        start += n
    return _unblock(o, shape), shares


def window_attention_fused(q, segs: Segments, window, *, chunk=None, q_start=0, scale=None):
    """impl=fused: flex_attention on CUDA for a whole sequence from position 0 without store entries or biases
    (`bmojo.ops.flex`), the chunked path everywhere else (on the CPU it is the fastest: `bmojo bench --suites
    attention`)."""
    if segs.store is None and not segs.biased and flex.eligible(q, segs, q_start=q_start):
        return flex.window_attention_flex(q, segs, window, chunk=chunk, scale=scale)
    return window_attention(q, segs, window, chunk=chunk, q_start=q_start, scale=scale)


def causal_attention(q, k, v, k_start=0, scale=None):
    """Full causal attention (the `A` layer): q (B, T, H, Dh) at positions k_start+Tk-T ..; k, v (B, Tk, Hk, Dh)
    hold every key from position k_start = 0.  Uses SDPA."""
    T, Tk, H, Hk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if H != Hk:  # grouped-query heads: each kv head serves H // Hk query heads (no copy when they are equal)
        kh, vh = kh.repeat_interleave(H // Hk, dim=1), vh.repeat_interleave(H // Hk, dim=1)
    if Tk == T:
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale)
    else:  # queries are the last T of Tk positions
        mask = torch.ones(T, Tk, dtype=torch.bool, device=q.device).tril(Tk - T)
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    return o.transpose(1, 2)
