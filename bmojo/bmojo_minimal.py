"""A minimal, dense, readable B'MOJO layer: the test oracle.

Everything is O(T^2) and written from the layer's definitions (docs/model.md), sharing no code with the
fast paths, only the mixer's weights: RoPE in complex form, the causal conv as a padded F.conv1d, the SSM
(Mamba-1 or Mamba-2) as a loop over time from its equations, the eidetic memory as a prefix top-M (with decay
1 and static scores, "top-M of memory plus chunk" is top-M over everything before the chunk), and attention as
one dense masked softmax over the concatenated keys [eidetic (T) | fading (T) | raw (T)].  (The `random` and
`recency` scorers' per-position scores are the scorer's own: a seeded draw is not maths to rewrite.)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rope_complex(x: torch.Tensor, theta: float, fraction: float = 1.0) -> torch.Tensor:
    """x (B, T, H, Dh) at positions 0..T-1; pairs (x_j, x_{j+Dh/2}) rotate by pos * theta^(-2j/Dh), for the
    first round(fraction * Dh/2) pairs only."""
    T, Dh = x.shape[1], x.shape[-1]
    freqs = theta ** (-torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
    freqs[round(fraction * (Dh // 2)):] = 0.0
    rot = torch.polar(torch.ones(T, Dh // 2, dtype=torch.float64), torch.arange(T)[:, None] * freqs)
    xc = torch.complex(x[..., :Dh // 2].double(), x[..., Dh // 2:].double()) * rot[None, :, None, :]
    return torch.cat([xc.real, xc.imag], dim=-1).to(x.dtype)


def prefix_topk_memory(scores: torch.Tensor, chunk: int, M: int) -> torch.Tensor:
    """scores (B, T) -> in_mem (B, T, T) bool: key j is in the memory seen by query i
    (top-M scores among positions < start of i's chunk)."""
    B, T = scores.shape
    in_mem = torch.zeros(B, T, T, dtype=torch.bool)
    for i in range(T):
        end = (i // chunk) * chunk
        if end == 0 or M == 0:
            continue
        # top-M, ties to the earlier position (as bmojo.ops.eidetic; topk's tie order varies by device)
        idx = scores[:, :end].argsort(dim=1, descending=True, stable=True)[:, :min(M, end)]  # (B, m)
        in_mem[torch.arange(B)[:, None], i, idx] = True
    return in_mem


def _conv_silu(x: torch.Tensor, conv: torch.nn.Conv1d) -> torch.Tensor:
    """silu of the depthwise causal conv of x (B, T, C) with conv's weights, as a left-padded F.conv1d."""
    K = conv.kernel_size[0]
    return F.silu(F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), conv.weight, conv.bias,
                           groups=x.shape[-1]).transpose(1, 2))


def ssm_minimal(ssm, x: torch.Tensor) -> torch.Tensor:
    """The output of a Mamba1Mixer or Mamba2Mixer on x (B, T, D) from a zero state, from its weights: a loop over
    time of h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t, y_t = C_t . h_t + D x_t, then the gate and out_proj."""
    Bsz, T, _ = x.shape
    if hasattr(ssm, "x_proj"):  # Mamba-1: per channel e, a state of N
        N, R = ssm.d_state, ssm.dt_rank
        xs, z = F.linear(x, ssm.in_proj.weight).chunk(2, dim=-1)
        xs = _conv_silu(xs, ssm.conv1d)
        dtr, Bm, Cm = F.linear(xs, ssm.x_proj.weight).split([R, N, N], dim=-1)
        dt = F.softplus(F.linear(dtr, ssm.dt_proj.weight, ssm.dt_proj.bias))  # (B, T, E)
        A = -torch.exp(ssm.A_log)  # (E, N)
        h = x.new_zeros(Bsz, xs.shape[-1], N)
        ys = []
        for t in range(T):
            h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * xs[:, t])[..., None] * Bm[:, t, None, :]
            ys.append((h * Cm[:, t, None, :]).sum(-1) + ssm.D * xs[:, t])
        y = torch.stack(ys, 1) if ys else xs * 0
        return F.linear(y * F.silu(z), ssm.out_proj.weight)
    E, H, P, G, N = ssm.d_inner, ssm.n_heads, ssm.head_dim, ssm.n_groups, ssm.d_state  # Mamba-2: per head, P x N
    z, xBC, dt = F.linear(x, ssm.in_proj.weight).split([E, E + 2 * G * N, H], dim=-1)
    xs, Bm, Cm = _conv_silu(xBC, ssm.conv1d).split([E, G * N, G * N], dim=-1)
    xs = xs.view(Bsz, T, H, P)
    group = torch.arange(H) // (H // G)  # the B/C group each head reads
    Bm, Cm = Bm.view(Bsz, T, G, N)[:, :, group], Cm.view(Bsz, T, G, N)[:, :, group]  # (B, T, H, N)
    dt = F.softplus(dt + ssm.dt_bias)  # (B, T, H)
    A = -torch.exp(ssm.A_log)  # (H,)
    h = x.new_zeros(Bsz, H, P, N)
    ys = []
    for t in range(T):
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + \
            (dt[:, t, :, None] * xs[:, t])[..., None] * Bm[:, t, :, None, :]
        ys.append((h * Cm[:, t, :, None, :]).sum(-1) + ssm.D[:, None] * xs[:, t])
    y = (torch.stack(ys, 1) if ys else xs * 0).reshape(Bsz, T, E)
    u = y * F.silu(z)  # the gated RMSNorm
    u = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + ssm.norm.eps) * ssm.norm.weight
    return F.linear(u, ssm.out_proj.weight)


def dense_attention(q, k, v, window, fk=None, fv=None, in_mem=None, mem_v=None, mem_bias=None, fading_bias=None,
                    null=None):
    """q (B, T, H, Dh); k, v, fk, fv (B, T, Hk, Dh) from position 0; in_mem (B, T, T) or None;
    mem_v: the values memory entries carry (default v); mem_bias (B, T): a logit added to memory entry j;
    fading_bias (scalar): a logit added to every fading key; null = (key, value) (H, Dh): one more key of each
    head that every query sees."""
    B, T, H, Dh = q.shape
    rep = H // k.shape[2]
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    keys, vals, masks, biases = [], [], [], []
    if in_mem is not None:
        keys.append(k); vals.append(v if mem_v is None else mem_v); masks.append(in_mem & (j <= i - window))
        biases.append(mem_bias if mem_bias is not None else torch.zeros(B, T))
    if fk is not None:
        keys.append(fk); vals.append(fv); masks.append(((j > i - 2 * window) & (j <= i - window)).expand(B, T, T))
        biases.append(torch.zeros(B, T) + (fading_bias if fading_bias is not None else 0.0))
    keys.append(k); vals.append(v); masks.append(((j > i - window) & (j <= i)).expand(B, T, T))
    biases.append(torch.zeros(B, T))
    K = torch.cat(keys, 1).repeat_interleave(rep, dim=2)  # (B, S, H, Dh)
    V = torch.cat(vals, 1).repeat_interleave(rep, dim=2)
    if null is not None:  # a last key column, the same at every position, seen by every query
        K = torch.cat([K, null[0].expand(B, 1, H, Dh)], 1)
        V = torch.cat([V, null[1].expand(B, 1, H, Dh)], 1)
        masks.append(torch.ones(B, T, 1, dtype=torch.bool))
        biases.append(torch.zeros(B, 1))
    mask = torch.cat(masks, -1)  # (B, T, S)
    s = torch.einsum("bihd,bjhd->bhij", q, K) / math.sqrt(Dh)
    s = s + torch.cat(biases, 1)[:, None, None, :]  # per key: the gate's log-sigmoid, the fading offset, or 0
    s = s.masked_fill(~mask[:, None], float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", s.softmax(-1), V)


def scores_minimal(mixer, x: torch.Tensor, f_prev: torch.Tensor | None) -> torch.Tensor:
    """The selection score (B, T) of each token of x (B, T, D), from f_prev (B, T, D): the SSM output before it."""
    B, T, D = x.shape
    sel = mixer.selection
    if sel.selector == "innovation":
        return (x - f_prev @ sel.scorer.predictor.weight.t()).pow(2).mean(-1)
    if sel.selector == "norm":
        return (x - f_prev).pow(2).mean(-1)
    if sel.selector == "none":
        return torch.zeros(B, T)
    if sel.selector == "assoc":  # the delta rule over (previous input, input) pairs, token by token
        S, errs = torch.zeros(B, D, D, dtype=torch.float64), []
        for t in range(T):
            key = F.normalize(x[:, t - 1].double(), dim=-1) if t else torch.zeros(B, D, dtype=torch.float64)
            pred = (S @ key[:, :, None])[..., 0]
            err = x[:, t].double() - pred
            S = S + err[:, :, None] * key[:, None, :]
            errs.append(err.pow(2).sum(-1) / (x[:, t].double().pow(2).sum(-1) + pred.pow(2).sum(-1)))
        return torch.stack(errs, 1).float()
    from bmojo.layers.scorers.position import position_scores
    return position_scores(sel.selector, torch.arange(T), B, seed=mixer.layer_idx)


def bmojo_layer_minimal(mixer, x: torch.Tensor) -> torch.Tensor:
    """The output of a BMojoMixer (or windowed Attention) on x (B, T, D) from position 0, densely."""
    B, T, D = x.shape
    H, Hk, Dh, W = mixer.n_heads, mixer.n_kv_heads, mixer.head_dim, mixer.window
    a = x
    if mixer.attn_conv is not None:
        K = mixer.attn_conv.kernel_size[0]
        a = F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), mixer.attn_conv.weight, mixer.attn_conv.bias,
                     groups=D).transpose(1, 2)
    q = rope_complex(mixer.q_proj(a).view(B, T, H, Dh), mixer.rope_theta, mixer.rope_fraction)
    k = rope_complex(mixer.k_proj(a).view(B, T, Hk, Dh), mixer.rope_theta, mixer.rope_fraction)
    v = mixer.v_proj(a).view(B, T, Hk, Dh)
    ssm = getattr(mixer, "ssm", None)
    f = ssm_minimal(ssm, x) if ssm is not None else None
    fk = fv = in_mem = mem_v = mem_bias = None
    if getattr(mixer, "fading", False):
        kp, vp = (mixer.fk_proj, mixer.fv_proj) if hasattr(mixer, "fk_proj") else (mixer.k_proj, mixer.v_proj)
        fk = rope_complex(kp(f).view(B, T, Hk, Dh), mixer.rope_theta, mixer.rope_fraction)
        fv = vp(f).view(B, T, Hk, Dh)
    if getattr(mixer, "memory_size", 0) > 0:
        assert mixer.rule == "topk" and mixer.decay == 1.0, "the oracle covers top-k memory without decay"
        assert getattr(mixer, "memory_rope", "own") == "own", "the oracle covers eidetic keys at their own positions"
        f_prev = torch.cat([torch.zeros_like(x[:, :1]), f[:, :-1]], 1) if f is not None else None
        scores = scores_minimal(mixer, x, f_prev)
        sel = mixer.selection
        if sel.gate is not None:  # learned selection gate, reading the token or its conv input
            g = sel.gate(a if sel.gate_input == "conv" else x)[..., 0]
            scores = scores + g
            if sel.gate_read == "logit":  # log sigmoid(g) joins the entry's logit
                mem_bias = -F.softplus(-g)
            else:  # stored values scaled by sigmoid(g)
                mem_v = v * torch.sigmoid(g)[..., None, None]
        in_mem = prefix_topk_memory(scores.detach(), mixer.chunk, mixer.memory_size)
    null = (mixer.null_k, mixer.null_v) if getattr(mixer, "null_k", None) is not None else None
    o = dense_attention(q, k, v, W, fk, fv, in_mem, mem_v, mem_bias, getattr(mixer, "fading_bias", None), null)
    y = mixer.o_proj(o.reshape(B, T, H * Dh))
    return y + f if getattr(mixer, "ssm_residual", False) else y
