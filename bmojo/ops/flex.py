"""Windowed attention through `flex_attention`: the GPU path of `window_attention` for whole sequences.

The key sets of `window_attention` (each query block's eidetic memory, the fading band, the raw window) are
laid end to end as one key sequence [memory (nb * M) | fading (T) | raw (T)] and a mask says which of them a
query sees, with the same rules as `window_attention_ref`:
  - raw key j:      i - W < j <= i
  - fading key j:   i - 2W < j <= i - W
  - memory slot s of block b: b == i // C, and 0 <= mem_pos[b, s] <= i - W
flex_attention then skips every 128 x 128 tile the mask leaves empty, so the cost stays linear in T.

Used for sequences that start at position 0 (training, a prefill from an empty state), on CUDA, where the
compiled kernel runs forward and backward.  Decode steps and continuations use the chunked path.  On the CPU
flex_attention runs forward only (torch 2.13) and the chunked path is faster (`bmojo bench --suites
attention`), so `window_attention_fused` keeps the CPU on the chunked path; the eager (uncompiled) form of
this function ties the mask to the reference in the CPU tests.
"""
from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger("bmojo")
MIN_HEAD_DIM = 16  # the compiled kernel's smallest head dimension
RECOMPILES = 64  # one compiled kernel per (batch, length, heads, key sets): more than dynamo's default of 8


@functools.cache
def _api():
    """(flex_attention compiled, create_block_mask), or None where this torch has no flex_attention."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    cfg = torch._dynamo.config
    for field in ("recompile_limit", "cache_size_limit"):  # the name moved between torch releases
        if isinstance(getattr(cfg, field, None), int) and getattr(cfg, field) < RECOMPILES:
            setattr(cfg, field, RECOMPILES)  # past the limit dynamo would run flex_attention unfused
            break
    return torch.compile(flex_attention, dynamic=False), create_block_mask


def available() -> bool:
    return _api() is not None


def eligible(q, segs, *, q_start=0) -> bool:
    """Whether the flex path computes this call (segs: bmojo.ops.attention.Segments): a whole sequence from position 0
    on a CUDA device."""
    T, raw, fading = q.shape[1], segs.raw, segs.fading
    whole = T > 0 and q_start == 0 and raw.start == 0 and raw.k.shape[1] == T and \
        (fading is None or (fading.start == 0 and fading.k.shape[1] == T))
    dims = q.shape[-1] >= MIN_HEAD_DIM and raw.v.shape[-1] == q.shape[-1]
    return q.is_cuda and whole and dims and available()  # any length: the backend does not choose by length


def _band_mask(T: int, W: int, C: int, nm: int, M: int, fading: bool, mem_pos):
    """The mask_mod over keys [memory (nm) | fading (T if fading) | raw (T)] for queries 0 .. T-1."""
    f0 = nm
    r0 = nm + (T if fading else 0)

    def mask(b, h, i, kv):
        j = kv - r0
        visible = (kv >= r0) & (j <= i) & (i - j < W)
        if fading:
            jf = kv - f0
            visible = visible | ((kv >= f0) & (kv < r0) & (i - jf >= W) & (i - jf < 2 * W))
        if nm:
            s = kv.clamp(max=nm - 1)
            pos = mem_pos[b, s]
            visible = visible | ((kv < nm) & (s // M == i // C) & (pos >= 0) & (pos <= i - W))
        return visible

    return mask


def window_attention_flex(q, segs, window, *, chunk=None, scale=None, compiled=True):
    """`window_attention` for q_start = 0 and raw and fading streams from position 0 covering exactly the T queries,
    without biases or store entries.  q (B, T, H, Dh); segs.raw, segs.fading (B, T, Hk, Dh); segs.memory (B, nb, M,
    ...).  compiled=False runs flex_attention eagerly (any device, slow): the form the CPU tests check."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    Bsz, T, H, Dh = q.shape
    Hk = segs.raw.k.shape[2]
    W, C = window, (chunk or window)
    keys, vals = [segs.raw.k], [segs.raw.v]
    if segs.fading is not None:
        keys.insert(0, segs.fading.k)
        vals.insert(0, segs.fading.v)
    nm = M = 0
    pos = None
    if segs.memory is not None:
        mem = segs.memory
        nb, M = mem.k.shape[1], mem.k.shape[2]
        nm = nb * M
        keys.insert(0, mem.k.reshape(Bsz, nm, Hk, Dh))
        vals.insert(0, mem.v.reshape(Bsz, nm, Hk, -1))
        pos = mem.pos.reshape(Bsz, nm)
    kall, vall = (torch.cat(t, 1).transpose(1, 2) for t in (keys, vals))  # (B, Hk, S, Dh)
    mask_mod = _band_mask(T, W, C, nm, M, segs.fading is not None, pos)
    fn = _api()[0] if compiled else flex_attention
    block = create_block_mask(mask_mod, Bsz if nm else None, None, T, kall.shape[2], device=q.device)
    o = fn(q.transpose(1, 2), kall, vall, block_mask=block, scale=scale, enable_gqa=H != Hk)
    return o.transpose(1, 2)
