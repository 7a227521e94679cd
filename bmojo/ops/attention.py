"""Attention over [eidetic | fading | raw window] under one softmax.

A query at absolute position i sees
  - raw keys j with i - W < j <= i                       (the sliding window, W keys including itself)
  - fading keys j with i - 2W < j <= i - W              (SSM outputs, projected to keys/values)
  - eidetic entries of its query block with 0 <= pos <= i - W  (the memory as it stood before the block)
  - optionally (`extra`), its own per-head entries retrieved from the long-term store (bmojo.memory)
Query blocks are aligned to absolute multiples of `chunk` (C <= W).

Streams: k, v (B, Tk, Hk, Dh) hold keys at positions k_start .. k_start+Tk-1 (they must cover
[max(0, q_start-W+1), q_start+T)); fk, fv likewise from f_start.  mem_k, mem_v (B, nb, M, Hk, Dh) and
mem_pos (B, nb, M) (-1 = empty slot) give each query block's memory; nb = num_blocks(q_start, T, chunk);
mem_bias (B, nb, M), optional, is added to the memory entries' logits (the selection gate's log-sigmoid), and
fading_bias (a scalar tensor), optional, to every fading key's logit (a learned switch on the fading segment).
q (B, T, H, Dh) with H a multiple of Hk (grouped-query heads: kv head g serves q heads g*H/Hk ...).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bmojo.ops import flex


def num_blocks(q_start: int, T: int, chunk: int) -> int:
    """Query blocks aligned to multiples of chunk that cover positions q_start .. q_start+T-1."""
    return (q_start % chunk + T + chunk - 1) // chunk


def _neg(dtype):
    return torch.finfo(dtype).min  # finite, so fully masked (discarded) rows never produce NaN


def attend(q, keys, values, visible, scale, extra=None, bias=None):
    """One softmax for a few queries over an explicit key set.
    q (B, H, Dh); keys, values (B, S, Hk, Dh); visible (B, S) bool -> (B, H, Dh).
    `extra` = (keys, values (B, H, K, Dh), visible (B, H, K)): per-head entries (retrieved from the store) that
    join the same softmax.  `bias` (B, S) float is added to the keys' logits (the selection gate's log-sigmoid)."""
    Bsz, H, Dh = q.shape
    Hk = keys.shape[2]
    if extra is None:
        s = torch.einsum("bkgd,bskd->bkgs", q.view(Bsz, Hk, H // Hk, Dh), keys) * scale
        if bias is not None:
            s = s + bias[:, None, None, :].to(s.dtype)
        s = s.masked_fill(~visible[:, None, None, :], _neg(s.dtype))
        o = torch.einsum("bkgs,bskd->bkgd", s.softmax(-1), values)
        return o.reshape(Bsz, H, values.shape[-1])
    ek, ev, evis = extra  # per query head: join them as each head's own keys, one product per side
    G = H // Hk
    k_all = torch.cat([keys.transpose(1, 2).repeat_interleave(G, 1), ek], 2)  # (B, H, S + K, Dh)
    v_all = torch.cat([values.transpose(1, 2).repeat_interleave(G, 1), ev], 2)
    vis = torch.cat([visible[:, None].expand(Bsz, H, -1), evis], 2)
    s = torch.matmul(k_all, q[..., None])[..., 0].mul_(scale)
    if bias is not None:
        s = s + F.pad(bias, (0, ek.shape[2]))[:, None].to(s.dtype)
    s = s.masked_fill_(~vis, _neg(q.dtype))
    return torch.matmul(s.softmax(-1)[:, :, None], v_all)[:, :, 0]


def window_attention_ref(q, k, v, window, *, chunk=None, q_start=0, k_start=0, fk=None, fv=None, f_start=0,
                         mem_k=None, mem_v=None, mem_pos=None, mem_bias=None, fading_bias=None,
                     scale=None, extra=None):
    """Sequential reference: gathers each query's key set explicitly, one softmax per query (with `extra`, as in
    `window_attention_shares`, each query's retrieved entries too)."""
    Bsz, T, H, Dh = q.shape
    W, C = window, (chunk or window)
    scale = scale if scale is not None else 1.0 / math.sqrt(Dh)
    b0 = q_start // C
    outs = []
    for t, q_t in enumerate(q.unbind(1)):
        i = q_start + t
        keys, vals, vis, bias = [], [], [], []
        if mem_k is not None:
            b = i // C - b0
            keys.append(mem_k[:, b]); vals.append(mem_v[:, b])
            vis.append((mem_pos[:, b] >= 0) & (mem_pos[:, b] <= i - W))
            bias.append(mem_bias[:, b] if mem_bias is not None else q.new_zeros(mem_pos[:, b].shape))
        if fk is not None:
            lo, hi = max(0, i - 2 * W + 1, f_start), i - W  # inclusive
            if hi >= lo:
                keys.append(fk[:, lo - f_start:hi - f_start + 1]); vals.append(fv[:, lo - f_start:hi - f_start + 1])
                vis.append(torch.ones(Bsz, hi - lo + 1, dtype=torch.bool, device=q.device))
                bias.append(q.new_zeros(Bsz, hi - lo + 1) + (fading_bias if fading_bias is not None else 0.0))
        lo = max(0, i - W + 1, k_start)
        keys.append(k[:, lo - k_start:i - k_start + 1]); vals.append(v[:, lo - k_start:i - k_start + 1])
        vis.append(torch.ones(Bsz, i - lo + 1, dtype=torch.bool, device=q.device))
        bias.append(q.new_zeros(Bsz, i - lo + 1))
        ex = None if extra is None else tuple(e[:, t] for e in extra)
        b_all = torch.cat(bias, 1) if (mem_bias is not None or fading_bias is not None) else None
        outs.append(attend(q_t, torch.cat(keys, 1), torch.cat(vals, 1), torch.cat(vis, 1), scale, ex, b_all))
    return torch.stack(outs, dim=1) if outs else q.new_zeros(q.shape[:3] + v.shape[3:])


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


def _window_blocks(q, k, v, window, chunk, q_start, k_start, fk, fv, f_start, mem_k, mem_v, mem_pos, extra=None,
                   mem_bias=None, fading_bias=None):
    """The chunked path's tensors: queries in aligned blocks qb (B*nb, Hk, G*C, Dh), their key and value sets
    (B*nb, Hk, S, Dh) laid out [memory (M) | fading (C+W-1) | raw (C+W-1) | store (G*C*K, with `extra`)], the
    visibility mask (B*nb, 1 or Hk, G*C, S), the sizes of those key segments, and how to undo the blocking
    (see `_unblock`).  A query sees only its own K store entries: they join its block's key set under a mask.
    With `mem_bias` (B, nb, M) or `fading_bias`, `mask` is instead the float mask of SDPA: the bias on the memory
    (and fading) columns, 0 on the other visible keys, -inf on the hidden ones."""
    Bsz, T, H, Dh = q.shape
    Hk = k.shape[2]
    G = H // Hk
    W, C = window, (chunk or window)
    a0 = q_start - q_start % C
    r = q_start - a0
    nb = num_blocks(q_start, T, C)
    Tq, Kb = nb * C, C + W - 1
    # 1. queries in aligned blocks: (B, nb, Hk, G*C, Dh)
    qp = F.pad(q, (0, 0, 0, 0, r, Tq - r - T))
    qb = qp.view(Bsz, nb, C, Hk, G, Dh).permute(0, 1, 3, 4, 2, 5).reshape(Bsz, nb, Hk, G * C, Dh)
    # 2. per block key sets and their visibility (C, Kb): query c sees block column m iff c <= m < c + W
    cq = torch.arange(C, device=q.device)[:, None]
    mk = torch.arange(Kb, device=q.device)[None, :]
    band = (mk >= cq) & (mk < cq + W)
    keys, vals, vis, segs, bias = [], [], [], {}, []  # bias: (B or 1, nb, width) per key segment
    if mem_k is not None:
        qpos = a0 + torch.arange(Tq, device=q.device).view(nb, C)  # (nb, C)
        mp = mem_pos[:, :, None, :]  # (B, nb, 1, M)
        vis.append(((mp >= 0) & (mp <= qpos[None, :, :, None] - W))[:, :, None, None])  # (B, nb, 1, 1, C, M)
        keys.append(mem_k.transpose(2, 3))  # (B, nb, Hk, M, Dh)
        vals.append(mem_v.transpose(2, 3))
        segs["eidetic"] = mem_k.shape[2]
        bias.append(mem_bias.to(q.dtype) if mem_bias is not None else q.new_zeros(1, nb, mem_k.shape[2]))
    for name, ks, vs, start, first in (("fading", fk, fv, f_start, a0 - 2 * W + 1), ("raw", k, v, k_start, a0 - W + 1)):
        if ks is None:
            continue
        kb, valid = _frame_blocks(ks, start, first, Tq + W - 1, Kb, C)
        vb, _ = _frame_blocks(vs, start, first, Tq + W - 1, Kb, C)
        keys.append(kb); vals.append(vb)
        vis.append((band[None] & valid[:, None, :])[None, :, None, None])  # (1, nb, 1, 1, C, Kb)
        segs[name] = Kb
        fb = fading_bias.to(q.dtype) if (name == "fading" and fading_bias is not None) else 0.0
        bias.append(q.new_zeros(1, nb, Kb) + fb)
    # 3. the concatenated key sets.  Every kept query sees its own raw key; a fully masked row (none is
    # expected, a padded query at most) is opened to all keys, so no backend can return NaN there: its output
    # is discarded and its gradient is 0.
    shape = (Bsz, nb, Hk, G, C, H, r, T)
    kcat = torch.cat(keys, dim=3).flatten(0, 1)  # (B*nb, Hk, S, Dh)
    vcat = torch.cat(vals, dim=3).flatten(0, 1)
    S = kcat.shape[2]
    mask = torch.cat([m.expand(Bsz, nb, 1, 1, C, m.shape[-1]) for m in vis], dim=-1)  # (B, nb, 1, 1, C, S)
    mask = mask.expand(Bsz, nb, 1, G, C, S).reshape(Bsz * nb, 1, G * C, S)
    if extra is not None:  # 4. the store: block row (g, c) sees only its own K entries
        ek, ev, evis = (_block_rows(t, shape) for t in extra)  # (B*nb, Hk, G*C, K[, Dh])
        K = evis.shape[-1]
        own = torch.eye(G * C, dtype=torch.bool, device=q.device)[None, None, :, :, None] & evis[:, :, None]
        kcat = torch.cat([kcat, ek.flatten(2, 3)], 2)
        vcat = torch.cat([vcat, ev.flatten(2, 3)], 2)
        mask = torch.cat([mask.expand(-1, Hk, -1, -1), own.flatten(3, 4)], -1)  # (B*nb, Hk, G*C, S + G*C*K)
        segs["store"] = G * C * K
    mask = mask | ~mask.any(-1, keepdim=True)
    if mem_bias is not None or fading_bias is not None:  # additive: the segments' logit biases, same visibility
        b = torch.cat([t.expand(Bsz, nb, t.shape[-1]) for t in bias], -1).flatten(0, 1)[:, None, None, :]
        mask = F.pad(b, (0, mask.shape[-1] - b.shape[-1])).expand(mask.shape).masked_fill(~mask, float("-inf"))
    return qb.flatten(0, 1), kcat, vcat, mask, segs, shape


def _unblock(x, shape):
    """(B*nb, Hk, G*C, D) per-block rows -> (B, T, H, D) per query."""
    Bsz, nb, Hk, G, C, H, r, T = shape
    D = x.shape[-1]
    return x.reshape(Bsz, nb, Hk, G, C, D).permute(0, 1, 4, 2, 3, 5).reshape(Bsz, nb * C, H, D)[:, r:r + T]


def window_attention(q, k, v, window, *, chunk=None, q_start=0, k_start=0, fk=None, fv=None, f_start=0,
                     mem_k=None, mem_v=None, mem_pos=None, mem_bias=None, fading_bias=None,
                     scale=None, extra=None):
    """Chunked fast path, linear in T: each block of C queries reads C+W-1 raw keys, C+W-1 fading keys, its M
    memory entries and (with `extra`) each query's own store entries, in one SDPA call for all blocks (the CPU
    kernel fuses the mask, the softmax and both products, forward and backward).  Same signature and result as
    window_attention_ref."""
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    qb, kcat, vcat, mask, _, shape = _window_blocks(q, k, v, window, chunk, q_start, k_start, fk, fv, f_start,
                                                    mem_k, mem_v, mem_pos, extra, mem_bias, fading_bias)
    return _unblock(F.scaled_dot_product_attention(qb, kcat, vcat, attn_mask=mask, scale=scale), shape)


def window_attention_shares(q, k, v, window, *, chunk=None, q_start=0, k_start=0, fk=None, fv=None, f_start=0,
                            mem_k=None, mem_v=None, mem_pos=None, mem_bias=None, fading_bias=None,
                     scale=None, extra=None):
    """`window_attention` with an explicit softmax, also returning where each query's attention went:
    (output (B, T, H, Dv), shares {"eidetic" | "fading" | "raw" | "store": (B, T, H)}), the shares of a query
    summing to 1 (for inspection: `bmojo inspect`).  `extra` = (keys, values (B, T, H, K, Dh), visible
    (B, T, H, K)) adds per-query, per-head entries (retrieved from the store) to each query's softmax."""
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    qb, kcat, vcat, mask, segs, shape = _window_blocks(q, k, v, window, chunk, q_start, k_start, fk, fv, f_start,
                                                       mem_k, mem_v, mem_pos, extra, mem_bias, fading_bias)
    s = qb @ kcat.transpose(-1, -2) * scale
    p = (s + mask if mask.is_floating_point() else s.masked_fill(~mask, _neg(q.dtype))).softmax(-1)
    o = p @ vcat
    shares, start = {}, 0
    for name, n in segs.items():
        shares[name] = _unblock(p[..., start:start + n].sum(-1, keepdim=True), shape)[..., 0]
        start += n
    return _unblock(o, shape), shares


def _block_rows(x, shape):
    """Per-query tensors (B, T, H, ...) -> the blocked row layout of `_window_blocks` (B*nb, Hk, G*C, ...)."""
    Bsz, nb, Hk, G, C, H, r, T = shape
    tail = x.shape[3:]
    pad = x.new_zeros(Bsz, nb * C, *x.shape[2:])
    pad[:, r:r + T] = x
    x = pad.view(Bsz, nb, C, Hk, G, *tail).movedim(2, 4)  # (B, nb, Hk, G, C, ...)
    return x.reshape(Bsz * nb, Hk, G * C, *tail)


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


def window_attention_fused(q, k, v, window, *, chunk=None, q_start=0, k_start=0, fk=None, fv=None, f_start=0,
                           mem_k=None, mem_v=None, mem_pos=None, mem_bias=None, fading_bias=None,
                     scale=None, extra=None):
    """impl=fused: flex_attention on CUDA for a whole sequence from position 0 without store entries
    (`bmojo.ops.flex`), the chunked path everywhere else (on the CPU it is the fastest: `bmojo bench --suites
    attention`)."""
    biased = mem_bias is not None or fading_bias is not None
    if extra is None and not biased and flex.eligible(q, k, q_start=q_start, k_start=k_start, fk=fk, f_start=f_start,
                                                      v=v):
        return flex.window_attention_flex(q, k, v, window, chunk=chunk, fk=fk, fv=fv, mem_k=mem_k, mem_v=mem_v,
                                          mem_pos=mem_pos, scale=scale)
    return window_attention(q, k, v, window, chunk=chunk, q_start=q_start, k_start=k_start, fk=fk, fv=fv,
                            f_start=f_start, mem_k=mem_k, mem_v=mem_v, mem_pos=mem_pos, mem_bias=mem_bias,
                            fading_bias=fading_bias, scale=scale, extra=extra)
