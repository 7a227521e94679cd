"""Rotary position embedding at absolute positions (Llama's rotate-half convention)."""
from __future__ import annotations

import torch


def rotated_pairs(dim: int, fraction: float) -> int:
    """How many of a head's dim/2 frequency pairs rotate (the highest frequencies) for a rope_fraction."""
    return round(fraction * (dim // 2))


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float, dtype: torch.dtype, fraction: float = 1.0):
    """positions (T,) long -> cos, sin (T, 1, dim) to broadcast over (B, T, H, dim).  With fraction < 1 only the
    highest-frequency pairs rotate; the others carry no position (their angle is 0)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    inv_freq[rotated_pairs(dim, fraction):] = 0.0
    ang = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (T, dim/2)
    ang = torch.cat([ang, ang], dim=-1)[:, None, :]  # (T, 1, dim)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, Dh) rotated by (cos, sin) of its positions."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin
