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


def check_state(state, mixer, batch: int) -> None:
    """Fail loudly when a state of another kind, shape or batch is handed to a mixer."""
    owner = type(mixer).__name__
    if not isinstance(state, LayerState):
        raise TypeError(f"{owner}: expected a decode state, got {type(state).__name__}")
    if state.batch_size() != batch:
        raise ValueError(f"{owner}: decode state has batch {state.batch_size()}, input has batch {batch}")
    span = getattr(state, "span", None)
    cache = mixer.__dict__.setdefault("_state_shapes", {})
    if (batch, span) not in cache:
        ref = mixer.init_state(batch, "meta", capacity=span)
        cache[(batch, span)] = (type(ref), [tuple(t.shape) for t in ref.tensors()])
    kind, shapes = cache[(batch, span)]
    got = [tuple(t.shape) for t in state.tensors()]
    if type(state) is not kind or got != shapes:
        raise TypeError(f"{owner}: expected a {kind.__name__} with tensor shapes {shapes}, got a "
                        f"{type(state).__name__} with {got} (a decode state from another layer or model?)")


def check_input(x: torch.Tensor, width: int, owner: str, rank: int = 3) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != rank or x.shape[-1] != width:
        shape = "(B, T, D)" if rank == 3 else "(B, D)"
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{owner}: input must be {shape} with D={width}, got {got}")
    if not x.is_floating_point():
        raise TypeError(f"{owner}: input must be floating point, got {x.dtype}")


def check_call(mixer, x: torch.Tensor, state, rank: int = 3) -> None:
    """The checks every mixer runs before any compute: input shape/dtype, then the state."""
    check_input(x, mixer.d_model, type(mixer).__name__, rank)
    if state is not None:
        check_state(state, mixer, x.shape[0])


class MixerOutput(tuple):
    """What a mixer's parallel call returns: it unpacks as (y, state), like every mixer's, and also carries what
    else the call computed: `aux_loss` (a scalar to add to the training loss, or None) and `record` (with
    forward(..., record=True): what the layer did, for inspection; else None)."""

    def __new__(cls, y, state, aux_loss=None, record=None):
        out = super().__new__(cls, (y, state))
        out.aux_loss, out.record = aux_loss, record
        return out

    @classmethod
    def of(cls, out) -> "MixerOutput":
        """Any mixer's (y, state) as a MixerOutput (mixers without extras return plain tuples)."""
        return out if isinstance(out, cls) else cls(*out)
