"""Rotary position embedding at absolute positions (Llama's rotate-half convention)."""
from __future__ import annotations

import functools

import torch


def rotated_pairs(dim: int, fraction: float) -> int:
    """How many of a head's dim/2 frequency pairs rotate (the highest frequencies) for a rope_fraction."""
    return round(fraction * (dim // 2))


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float, dtype: torch.dtype, fraction: float = 1.0):
    """positions (T,) long -> cos, sin (T, 1, dim) to broadcast over (B, T, H, dim).  With fraction < 1 only the
    highest-frequency pairs rotate; the others carry no position (their angle is 0)."""
    # (a compiled step traces the function itself: the cache wrapper is Python state dynamo would warn about)
    inv_freq = (_inv_freq.__wrapped__ if torch.compiler.is_compiling() else _inv_freq)(dim, theta, fraction,
                                                                                         positions.device)
    ang = positions.to(torch.float32)[:, None, None] * inv_freq  # (T, 1, dim)
    return ang.cos().to(dtype), ang.sin().to(dtype)


@functools.lru_cache(maxsize=64)
def _inv_freq(dim: int, theta: float, fraction: float, device: torch.device) -> torch.Tensor:
    """(dim,) the frequency of each half's pairs, twice (rotate-half layout), 0 for pairs that do not rotate;
    computed once per (dim, theta, fraction, device): a decode step pays only for its own angles."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    inv_freq[rotated_pairs(dim, fraction):] = 0.0
    return torch.cat([inv_freq, inv_freq])


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, Dh) rotated by (cos, sin) of its positions."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin
