"""Selective SSM mixers (fading memory): Mamba-1 and Mamba-2, with HF's parameter names and maths
(`MambaMixer`, `Mamba2Mixer`), so weights import 1:1."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bmojo.config import ModelConfig
from bmojo.layers.norm import GatedRMSNorm
from bmojo.layers.state import LayerState, check_call
from bmojo.ops.backend import backend_of
from bmojo.ops.conv import causal_conv1d_step
from bmojo.ops.scan import selective_scan_step
from bmojo.ops.ssd import ssd_step



@dataclass
class SSMState(LayerState):
    conv: torch.Tensor  # (B, conv channels, K-1)
    h: torch.Tensor  # mamba1 (B, E, N); mamba2 (B, H, P, N)


def _no_decay(*params: nn.Parameter) -> None:
    for p in params:
        p._no_weight_decay = True


def _init_dt_bias(n: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4) -> torch.Tensor:
    """Inverse softplus of dt drawn log-uniformly in [dt_min, dt_max] (mamba_ssm's init)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


class _SSMBase(nn.Module):
    conv_dim: int

    def __init__(self, impl):
        super().__init__()
        self.backend = backend_of(impl)  # the kernels (bmojo.ops.backend), chosen once; the model sets it when moved

    def _conv(self, xs, state, return_state):
        return self.backend.conv(xs, self.conv1d.weight[:, 0], self.conv1d.bias,
                                 state.conv if state is not None else None, return_state)



class Mamba1Mixer(_SSMBase):
    """(xs, z) = in_proj(x); xs = silu(conv(xs)); (dt, B, C) = x_proj(xs); dt = softplus(dt_proj(dt));
    y = scan(xs, dt, -exp(A_log), B, C) + D*xs; out = out_proj(y * silu(z))."""

    def __init__(self, cfg: ModelConfig, impl: str = "fast"):
        super().__init__(impl)
        D, E, N, K, R = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.mamba1_dt_rank
        self.d_model, self.d_inner, self.d_state, self.dt_rank = D, E, N, R
        self.conv_dim, self.chunk = E, cfg.ssm_chunk
        self.in_proj = nn.Linear(D, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, K, groups=E, padding=K - 1, bias=True)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, D, bias=False)
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -R ** -0.5, R ** -0.5)
            self.dt_proj.bias.copy_(_init_dt_bias(E))
        self.dt_proj._no_reinit = True
        _no_decay(self.A_log, self.D)

    def _ssm_inputs(self, xs):
        dt, B, C = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt)), B, C, -torch.exp(self.A_log.float())

    def forward(self, x, state=None, return_state=True):
        check_call(self, x, state)
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, E) each
        xs, conv_state = self._conv(xs, state, return_state)
        xs = F.silu(xs)
        dt, B, C, A = self._ssm_inputs(xs)
        y, h = self.backend.scan(xs, dt, A, B, C, self.D, state.h if state is not None else None, return_state)
        out = self.out_proj(y * F.silu(z))
        return out, (SSMState(conv_state, h.to(x.dtype)) if return_state else None)  # the state follows the model

    def step(self, x_t, state):
        check_call(self, x_t, state, rank=2)
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, E)
        xs = F.silu(causal_conv1d_step(xs, state.conv, self.conv1d.weight[:, 0], self.conv1d.bias))
        dt, B, C, A = self._ssm_inputs(xs)
        y = selective_scan_step(xs, dt, A, B, C, self.D, state.h)
        return self.out_proj(y * F.silu(z)), state

    def init_state(self, batch, device=None, dtype=None, capacity=None) -> SSMState:
        K = self.conv1d.kernel_size[0]
        return SSMState(torch.zeros(batch, self.d_inner, K - 1, device=device, dtype=dtype),
                        torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=dtype))


class Mamba2Mixer(_SSMBase):
    """(z, xBC, dt) = in_proj(x); xBC = silu(conv(xBC)); (xs, B, C) = xBC; dt = softplus(dt + dt_bias);
    y = ssd(xs, dt, -exp(A_log), B, C) + D*xs; out = out_proj(norm(y, gate=z))."""

    def __init__(self, cfg: ModelConfig, impl: str = "fast"):
        super().__init__(impl)
        D, E, N, K, P, G = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.ssm_head_dim, cfg.n_groups
        H = E // P
        self.d_model, self.d_inner, self.d_state, self.n_heads, self.head_dim, self.n_groups = D, E, N, H, P, G
        self.chunk = cfg.ssm_chunk
        self.conv_dim = E + 2 * G * N
        self.in_proj = nn.Linear(D, E + self.conv_dim + H, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, K, groups=self.conv_dim, padding=K - 1, bias=True)
        self.dt_bias = nn.Parameter(_init_dt_bias(H))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, H + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = GatedRMSNorm(E, eps=cfg.norm_eps)
        self.out_proj = nn.Linear(E, D, bias=False)
        _no_decay(self.A_log, self.D, self.dt_bias)

    def _split(self, zxbcdt):
        return zxbcdt.split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)

    def _ssm_inputs(self, xBC, dt):
        GN = self.n_groups * self.d_state
        xs, B, C = xBC.split([self.d_inner, GN, GN], dim=-1)
        return xs, B, C, F.softplus(dt + self.dt_bias), -torch.exp(self.A_log.float())

    def forward(self, x, state=None, return_state=True):
        check_call(self, x, state)
        Bsz, T, _ = x.shape
        z, xBC, dt = self._split(self.in_proj(x))
        xBC, conv_state = self._conv(xBC, state, return_state)
        xs, B, C, dt, A = self._ssm_inputs(F.silu(xBC), dt)
        kw = {"chunk": self.chunk} if self.backend.impl == "fast" else {}
        y, h = self.backend.ssd(xs.view(Bsz, T, self.n_heads, self.head_dim), dt, A,
                              B.view(Bsz, T, self.n_groups, self.d_state), C.view(Bsz, T, self.n_groups, self.d_state),
                              self.D, state.h if state is not None else None, return_state, **kw)
        out = self.out_proj(self.norm(y.reshape(Bsz, T, self.d_inner), z))
        return out, (SSMState(conv_state, h.to(x.dtype)) if return_state else None)  # the state follows the model

    def step(self, x_t, state):
        check_call(self, x_t, state, rank=2)
        Bsz = x_t.shape[0]
        z, xBC, dt = self._split(self.in_proj(x_t))
        xBC = causal_conv1d_step(xBC, state.conv, self.conv1d.weight[:, 0], self.conv1d.bias)
        xs, B, C, dt, A = self._ssm_inputs(F.silu(xBC), dt)
        y = ssd_step(xs.view(Bsz, self.n_heads, self.head_dim), dt, A, B.view(Bsz, self.n_groups, self.d_state),
                     C.view(Bsz, self.n_groups, self.d_state), self.D, state.h)
        return self.out_proj(self.norm(y.reshape(Bsz, self.d_inner), z)), state

    def init_state(self, batch, device=None, dtype=None, capacity=None) -> SSMState:
        K = self.conv1d.kernel_size[0]
        return SSMState(torch.zeros(batch, self.conv_dim, K - 1, device=device, dtype=dtype),
                        torch.zeros(batch, self.n_heads, self.head_dim, self.d_state, device=device, dtype=dtype))


def make_ssm(cfg: ModelConfig, impl) -> nn.Module:
    return (Mamba1Mixer if cfg.ssm_kind == "mamba1" else Mamba2Mixer)(cfg, impl)
