"""Attention mixers: full causal (`A`) and sliding window (`S`), with RoPE at absolute positions,
grouped-query heads and an optional short causal conv on the attention input (Llama names)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from bmojo.config import ModelConfig
from bmojo.layers.state import LayerState, check_call
from bmojo.ops.attention import Segments, Stream, attend, causal_attention
from bmojo.ops.backend import Backend, backend_of
from bmojo.ops.conv import causal_conv1d_step
from bmojo.ops.rope import apply_rope, rope_cos_sin


@dataclass
class AttentionState(LayerState):
    """Raw keys/values in a buffer of `span` slots: position p lives in slot p % span.  A sliding window
    wraps around; a full-attention cache (span = capacity) fails when it is full."""

    k: torch.Tensor  # (B, span, Hk, Dh), RoPE applied
    v: torch.Tensor  # (B, span, Hk, Dh)
    conv: torch.Tensor | None = None  # (B, D, K-1) attn_conv state
    pos: int = 0  # tokens seen so far

    @property
    def span(self) -> int:
        return self.k.shape[1]


def ring_read(buf: torch.Tensor, end: int, n: int) -> tuple[torch.Tensor, int]:
    """The last min(n, end) positions before `end` from a ring buffer (B, span, ...), in position order."""
    start = max(0, end - n)
    slots = torch.arange(start, end, device=buf.device) % buf.shape[1]
    return buf[:, slots], start


def ring_from_stream(stream: torch.Tensor, stream_start: int, end: int, span: int) -> torch.Tensor:
    """A new ring buffer (B, span, ...) holding the stream's last `span` positions before `end`."""
    start = max(stream_start, end - span)
    buf = stream.new_zeros(stream.shape[0], span, *stream.shape[2:])
    buf[:, torch.arange(start, end, device=stream.device) % span] = stream[:, start - stream_start:]
    return buf


def ring_write(buf: torch.Tensor, slot: int, value: torch.Tensor | int) -> None:
    """buf[:, slot] = value (a tensor, or one integer for every row), through `select`: a compiled decode step then
    treats the slot as a symbol, where an integer subscript makes torch.compile specialise (and recompile) on it."""
    row = buf.select(1, slot)
    if isinstance(value, torch.Tensor):
        row.copy_(value)
    else:
        row.fill_(value)


def ring_positions(end: int, span: int, device) -> torch.Tensor:
    """Position held by each slot of a ring after writing position end-1 (negative = never written)."""
    s = torch.arange(span, device=device)
    return (end - 1) - ((end - 1 - s) % span)


class Attention(nn.Module):
    """`window=None`: full causal attention (SDPA, a growing cache up to `capacity`);
    `window=W`: each query sees its last W raw tokens (chunked, linear in T; a ring buffer of W)."""

    def __init__(self, cfg: ModelConfig, window: int | None, impl: str | Backend = "fast"):
        super().__init__()
        self.backend = backend_of(impl)  # the kernels (bmojo.ops.backend), chosen once; the model sets it when moved
        D, H, Hk = cfg.d_model, cfg.n_heads, cfg.kv_heads
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = D, H, Hk, cfg.head_dim
        self.window, self.chunk = window, (cfg.chunk_size if window else None)
        self.rope_theta, self.rope_fraction, self.capacity = cfg.rope_theta, cfg.rope_fraction, cfg.max_seq_len
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q_proj = nn.Linear(D, H * self.head_dim, bias=False)
        self.k_proj = nn.Linear(D, Hk * self.head_dim, bias=False)
        self.v_proj = nn.Linear(D, Hk * self.head_dim, bias=False)
        self.o_proj = nn.Linear(H * self.head_dim, D, bias=False)
        K = cfg.attn_conv_size
        self.attn_conv = nn.Conv1d(D, D, K, groups=D, padding=K - 1, bias=True) if cfg.attn_conv else None

    # ---- pieces shared with B'MOJO ---------------------------------------------------------------------
    def _attn_input(self, x, state, return_state):
        """x (B, T, D) -> the attention input (short causal conv when enabled) and the conv state."""
        if self.attn_conv is None:
            return x, None
        return self.backend.conv(x, self.attn_conv.weight[:, 0], self.attn_conv.bias,
                                 state.conv if state is not None else None, return_state)

    def _attn_input_step(self, x_t, state):
        if self.attn_conv is None:
            return x_t
        return causal_conv1d_step(x_t, state.conv, self.attn_conv.weight[:, 0], self.attn_conv.bias)

    def _rope(self, t0: int, T: int, device, dtype):
        return rope_cos_sin(torch.arange(t0, t0 + T, device=device), self.head_dim, self.rope_theta, dtype,
                            self.rope_fraction)

    def _kv(self, a, cos, sin):
        """a (B, T, D) -> k, v (B, T, Hk, Dh), k rotated."""
        B, T, _ = a.shape
        k = self.k_proj(a).view(B, T, self.n_kv_heads, self.head_dim)
        return apply_rope(k, cos, sin), self.v_proj(a).view(B, T, self.n_kv_heads, self.head_dim)

    def _qkv(self, a, cos, sin):
        B, T, _ = a.shape
        q = apply_rope(self.q_proj(a).view(B, T, self.n_heads, self.head_dim), cos, sin)
        return (q, *self._kv(a, cos, sin))

    def _raw_stream(self, k, v, state, t0):
        """Keys/values from the state's buffer followed by the new ones, and the first position held."""
        if state is None:
            return k, v, t0
        n = self.window if self.window is not None else t0
        hk, start = ring_read(state.k, t0, n)
        hv, _ = ring_read(state.v, t0, n)
        return torch.cat([hk, k], 1), torch.cat([hv, v], 1), start

    def _raw_state(self, ks, vs, start, end, conv_state, state):
        span = self.window if self.window is not None else (state.span if state is not None else self.capacity)
        if self.window is None and end > span:
            raise ValueError(f"{type(self).__name__}: {end} tokens exceed the decode cache capacity {span} "
                             "(ModelConfig.max_seq_len); call with return_state=False or raise max_seq_len")
        return AttentionState(k=ring_from_stream(ks, start, end, span), v=ring_from_stream(vs, start, end, span),
                              conv=conv_state, pos=end)

    def _step_raw(self, a_t, state, cos, sin):
        """Write the token's k/v into the buffer; return q and the raw key set (keys, values)."""
        i = state.pos
        if self.window is None and i >= state.span:
            raise ValueError(f"{type(self).__name__}: decode cache is full ({state.span} tokens, "
                             "ModelConfig.max_seq_len); cannot append")
        q, k, v = self._qkv(a_t[:, None], cos, sin)
        ring_write(state.k, i % state.span, k[:, 0])
        ring_write(state.v, i % state.span, v[:, 0])
        return q[:, 0], state.k, state.v

    def _written(self, i: int, span: int, device) -> torch.Tensor:
        """(span,) bool: the buffer slots written once position i is (all of them from i = span - 1 on: that
        pattern is made once)."""
        if i >= span - 1:
            cache = self.__dict__.setdefault("_full_rings", {})
            if (span, device) not in cache:
                cache[(span, device)] = torch.ones(span, dtype=torch.bool, device=device)
            return cache[(span, device)]
        return ring_positions(i + 1, span, device) >= 0

    # ---- the mixer contract -----------------------------------------------------------------------------
    def forward(self, x, state=None, return_state=True):
        check_call(self, x, state)
        B, T, D = x.shape
        t0 = state.pos if state is not None else 0
        a, conv_state = self._attn_input(x, state, return_state)
        cos, sin = self._rope(t0, T, x.device, x.dtype)
        q, k, v = self._qkv(a, cos, sin)
        ks, vs, start = self._raw_stream(k, v, state, t0)
        if self.window is None and self.backend.impl != "ref":
            o = causal_attention(q, ks, vs, scale=self.scale)
        else:  # the windowed op with W >= T is exactly full causal attention
            W = self.window if self.window is not None else max(t0 + T, 1)
            o = self.backend.window_attention(q, Segments(Stream(ks, vs, start)), W, chunk=self.chunk or W,
                                              q_start=t0, scale=self.scale)
        y = self.o_proj(o.reshape(B, T, D))
        return y, (self._raw_state(ks, vs, start, t0 + T, conv_state, state) if return_state else None)

    def step(self, x_t, state):
        check_call(self, x_t, state, rank=2)
        a_t = self._attn_input_step(x_t, state)
        cos, sin = self._rope(state.pos, 1, x_t.device, x_t.dtype)
        q, keys, vals = self._step_raw(a_t, state, cos, sin)
        o = attend(q, keys, vals, self._written(state.pos, state.span, x_t.device).expand(x_t.shape[0], -1), self.scale)
        state.pos += 1
        return self.o_proj(o.reshape(x_t.shape[0], -1)), state

    def init_state(self, batch, device=None, dtype=None, capacity=None) -> AttentionState:
        span = self.window if self.window is not None else (capacity or self.capacity)
        kv = (batch, span, self.n_kv_heads, self.head_dim)
        conv = None
        if self.attn_conv is not None:
            conv = torch.zeros(batch, self.d_model, self.attn_conv.kernel_size[0] - 1, device=device, dtype=dtype)
        return AttentionState(k=torch.zeros(kv, device=device, dtype=dtype),
                              v=torch.zeros(kv, device=device, dtype=dtype), conv=conv, pos=0)
