"""Causal depthwise conv1d that carries its state.

Layout: x (B, T, C); weight (C, K); bias (C,); state (B, C, K-1) holds the last K-1 inputs, oldest first.
"""
from __future__ import annotations

import torch


def _zero_state(x: torch.Tensor, K: int) -> torch.Tensor:
    return x.new_zeros(x.shape[0], x.shape[2], K - 1)


def causal_conv1d_ref(x, weight, bias=None, initial_state=None, output_final_state=False):
    """Sequential reference: y_t = sum_k weight[:, k] * x_{t-K+1+k} + bias.  x (B, T, C) -> y (B, T, C)."""
    K = weight.shape[1]
    hist = list((initial_state if initial_state is not None else _zero_state(x, K)).unbind(-1))
    ys = []
    for x_t in x.unbind(1):  # (B, C)
        hist.append(x_t)
        hist = hist[-K:]
        window = torch.stack(hist, dim=-1)  # (B, C, K)
        y_t = (window * weight).sum(-1)
        ys.append(y_t if bias is None else y_t + bias)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(x.shape)  # (B, T, C)
    final = torch.stack(hist[len(hist) - (K - 1):], -1) if K > 1 else _zero_state(x, K)
    return y, (final if output_final_state else None)


def causal_conv1d(x, weight, bias=None, initial_state=None, output_final_state=False):
    """Fast path: K shifted multiply-adds over [state | x] in the (B, T, C) layout (no transposes; on a CPU
    forward + backward is faster than a grouped F.conv1d).  Same signature and result as the reference."""
    B, T, C = x.shape
    K = weight.shape[1]
    hist = initial_state.transpose(1, 2).to(x.dtype) if initial_state is not None else x.new_zeros(B, K - 1, C)
    xp = torch.cat([hist, x], dim=1)  # (B, K-1+T, C)
    y = xp[:, K - 1:] * weight[:, K - 1]
    for k in range(K - 1):
        y = y + xp[:, k:k + T] * weight[:, k]
    if bias is not None:
        y = y + bias
    final = xp[:, T:].transpose(1, 2).contiguous() if output_final_state else None  # (B, C, K-1)
    return y, final


def causal_conv1d_step(x_t, state, weight, bias=None):
    """One token: x_t (B, C); state (B, C, K-1), updated in place.  Returns y_t (B, C)."""
    window = torch.cat([state, x_t.unsqueeze(-1)], dim=-1)  # (B, C, K)
    y_t = (window * weight).sum(-1)
    if bias is not None:
        y_t = y_t + bias
    state.copy_(window[..., 1:])
    return y_t


def causal_conv1d_fused(x, weight, bias=None, initial_state=None, output_final_state=False):
    """causal-conv1d's CUDA kernel when installed and no initial state is given; the fast path otherwise."""
    if x.is_cuda and initial_state is None:
        from bmojo.ops import cuda

        if cuda.has("causal_conv1d"):
            return cuda.causal_conv1d_cuda(x, weight, bias, None, output_final_state)
    return causal_conv1d(x, weight, bias, initial_state, output_final_state)
