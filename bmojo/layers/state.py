"""Typed decode states.  Each mixer owns one dataclass of preallocated tensors, written in place by `step`."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class LayerState:
    """Base class: every field that is a tensor (or a nested LayerState) is part of the decode state."""

    def tensors(self) -> list[torch.Tensor]:
        out = []
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                out.append(v)
            elif isinstance(v, LayerState):
                out.extend(v.tensors())
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def batch_size(self) -> int:
        return self.tensors()[0].shape[0]


def check_state(state, cls, batch: int, owner: str) -> None:
    """Fail loudly when a state of another kind or batch is handed to a mixer."""
    if not isinstance(state, cls):
        raise TypeError(f"{owner}: expected a {cls.__name__}, got {type(state).__name__} "
                        "(a decode state from another layer or model?)")
    if state.batch_size() != batch:
        raise ValueError(f"{owner}: decode state has batch {state.batch_size()}, input has batch {batch}")


def check_input(x: torch.Tensor, width: int, owner: str, rank: int = 3) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != rank or x.shape[-1] != width:
        shape = "(B, T, D)" if rank == 3 else "(B, D)"
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{owner}: input must be {shape} with D={width}, got {got}")
    if not x.is_floating_point():
        raise TypeError(f"{owner}: input must be floating point, got {x.dtype}")
