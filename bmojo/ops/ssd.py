"""Mamba-2 selective scan in its SSD form (one scalar decay per head, B and C shared by a head group).

    h_t = exp(dt_t * A_h) * h_{t-1} + (dt_t * x_t) outer B_t       h: (B, H, P, N)
    y_t = h_t @ C_t + D_h * x_t

Shapes: x (B, T, H, P); dt (B, T, H) positive; A (H,) negative; B, C (B, T, G, N) with G dividing H
(head h reads group h // (H // G)); D (H,).  The fast path computes each chunk with matrix multiplies
and passes states between chunks with one segment-sum product (no Python loop; (T/L)^2 tiny terms).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand_groups(t: torch.Tensor, H: int) -> torch.Tensor:
    """(B, T, G, N) -> (B, T, H, N)."""
    return t.repeat_interleave(H // t.shape[2], dim=2)


def ssd_ref(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False):
    """Sequential fp32 reference, a loop over T."""
    Bsz, T, H, P = x.shape
    Bh, Ch = _expand_groups(B, H), _expand_groups(C, H)  # (B, T, H, N)
    h = initial_state if initial_state is not None else x.new_zeros(Bsz, H, P, B.shape[-1])
    ys = []
    for x_t, dt_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), Bh.unbind(1), Ch.unbind(1)):
        dA = torch.exp(dt_t * A)[..., None, None]  # (B, H, 1, 1)
        h = dA * h + (dt_t.unsqueeze(-1) * x_t).unsqueeze(-1) * B_t.unsqueeze(2)
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C_t))
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(Bsz, 0, H, P)
    if D is not None:
        y = y + x * D[:, None]
    return y, (h if output_final_state else None)


def ssd_step(x_t, dt_t, A, B_t, C_t, D, h):
    """One token.  x_t (B, H, P); dt_t (B, H); B_t, C_t (B, G, N); h (B, H, P, N) updated in place."""
    Bsz, H, P = x_t.shape
    G, N = B_t.shape[1], B_t.shape[2]
    hg = h.view(Bsz, G, H // G, P, N)  # heads grouped: B_t, C_t broadcast over a group's heads (no copies)
    hg.mul_(torch.exp(dt_t * A).view(Bsz, G, H // G, 1, 1))
    hg.add_((dt_t.unsqueeze(-1) * x_t).view(Bsz, G, H // G, P, 1) * B_t.view(Bsz, G, 1, 1, N))
    y = torch.matmul(hg, C_t.view(Bsz, G, 1, N, 1)).view(Bsz, H, P)
    return y + x_t * D[:, None] if D is not None else y


def segsum(a: torch.Tensor) -> torch.Tensor:
    """a (..., L) -> (..., L, L) with out[i, j] = sum_{j < k <= i} a_k for j <= i, and -inf above the diagonal."""
    L = a.shape[-1]
    a = a.unsqueeze(-1).expand(*a.shape, L)  # a[..., i, j] = a_i
    strict = torch.ones(L, L, dtype=torch.bool, device=a.device).tril(-1)
    out = a.masked_fill(~strict, 0).cumsum(dim=-2)
    return out.masked_fill(~strict.logical_or(torch.eye(L, dtype=torch.bool, device=a.device)), float("-inf"))


def ssd_chunked(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, chunk=64):
    """Chunked SSD: matrix form inside chunks, and one segment-sum product passes states between chunks (no
    loop).  Same signature as the reference.  Decays are computed in float32 and cast to x's dtype for the
    products, so bf16 / fp16 inputs work and keep their dtype."""
    Bsz, T, H, P = x.shape
    N, L, dtype = B.shape[-1], chunk, x.dtype
    pad = (-T) % L
    if pad:  # dt = 0 on padding: decay 1 and no input, so states and outputs are unchanged
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    nc = x.shape[1] // L
    Bh, Ch = _expand_groups(B, H).to(dtype), _expand_groups(C, H).to(dtype)
    xdt = x * dt.unsqueeze(-1).to(dtype)
    # 1. split into chunks
    xdt_c = xdt.view(Bsz, nc, L, H, P)
    B_c, C_c = Bh.view(Bsz, nc, L, H, N), Ch.view(Bsz, nc, L, H, N)
    A_dt = (dt.float() * A.float()).view(Bsz, nc, L, H).permute(0, 3, 1, 2)  # (B, H, nc, L) float32
    A_cs = A_dt.cumsum(-1)
    # 2. outputs from inputs of the same chunk (the diagonal blocks)
    decay_in = torch.exp(segsum(A_dt)).to(dtype)  # (B, H, nc, L, L)
    scores = torch.einsum("bclhn,bcshn->bhcls", C_c, B_c) * decay_in
    y_diag = torch.einsum("bhcls,bcshp->bclhp", scores, xdt_c)
    # 3. each chunk's contribution to the state at its end
    decay_to_end = torch.exp(A_cs[..., -1:] - A_cs).to(dtype)  # (B, H, nc, L)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B_c, decay_to_end, xdt_c)
    # 4. the state entering each chunk: h_c = sum_{c' < c} exp(sum_{c' < k < c} a_k) s_c' (plus the initial
    # state, as chunk -1), with a_k = the log decay over chunk k: one product with exp(segsum) over chunks
    h0 = initial_state if initial_state is not None else x.new_zeros(Bsz, H, P, N)
    states = torch.cat([h0[:, None].to(dtype), chunk_states], 1)  # (B, nc + 1, H, P, N)
    decay_chunks = torch.exp(segsum(F.pad(A_cs[..., -1], (1, 0)))).to(dtype)  # (B, H, nc + 1, nc + 1)
    entering = torch.einsum("bhzc,bchpn->bzhpn", decay_chunks, states)  # (B, nc + 1, H, P, N)
    starts, h = entering[:, :-1], entering[:, -1]
    # 5. outputs from the state entering the chunk
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C_c, starts, torch.exp(A_cs).to(dtype))
    y = (y_diag + y_off).reshape(Bsz, nc * L, H, P)[:, :T]
    if D is not None:
        y = y + x[:, :T] * D[:, None].to(dtype)
    return y, (h if output_final_state else None)
