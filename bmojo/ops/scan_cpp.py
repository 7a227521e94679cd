"""The fused CPU scans (Mamba-1, and Mamba-2 through it): a C++ extension compiled on first use
(`csrc/selective_scan.cpp`).

`selective_scan_cpp` and `ssd_cpp` have the references' signatures and compute float32 CPU tensors only: the
forward walks T once per (row, channel block) and keeps the state every `chunk` steps; the backward recomputes
each chunk's states from there (never B x T x E x N).  Any other tensor is an error, not a silent change of
kernel; an empty sequence (T = 0), which the kernels have no work for, runs the PyTorch path.  `available()`
compiles the extension (about a minute, once per machine and source version: bmojo.utils.build) and says whether
that worked; `bmojo.ops.backend` chooses these kernels only when it did.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger("bmojo")
SOURCE = Path(__file__).parent / "csrc" / "selective_scan.cpp"
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]  # -fopenmp: at::parallel_for is serial without it
_ext = None
_error: str | None = None


def available() -> bool:
    """Compile (once) and load the extension; False, with the reason in `error()`, if that is impossible."""
    global _ext, _error
    if _ext is None and _error is None:
        if shutil.which("c++") is None and shutil.which("g++") is None:
            _error = "no C++ compiler on PATH"
        else:
            try:
                from bmojo.utils.build import load_once

                _ext = load_once("bmojo_selective_scan", SOURCE, FLAGS)
            except Exception as e:  # compiler missing or broken, ninja missing, headers missing: all mean "no"
                _error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        if _error:
            log.warning("bmojo: the fused CPU scan is unavailable (%s); using the PyTorch fast path "
                        "(it needs a C++ compiler and `pip install ninja`)", _error)
    return _ext is not None


def error() -> str | None:
    return _error


def _check(name: str, *tensors) -> None:
    """The C++ kernels take float32 CPU tensors, and only once the extension is built."""
    bad = [t for t in tensors if t.device.type != "cpu" or t.dtype != torch.float32]
    if bad:
        raise ValueError(f"{name}: the C++ kernel computes float32 CPU tensors, got {bad[0].dtype} on "
                         f"{bad[0].device}")
    if not available():
        raise RuntimeError(f"{name}: the C++ extension is unavailable ({error()})")


# The kernels as torch custom ops, so that torch.compile traces through them (no graph break) and autograd
# sees one node: bmojo::scan_fwd -> (y, h_T, checkpoints), bmojo::scan_bwd -> the six input gradients.
@torch.library.custom_op("bmojo::scan_fwd", mutates_args=())
def _scan_fwd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor, chunk: int, scalar_decay: bool,
              P: int) -> tuple[Tensor, Tensor, Tensor]:
    y, h_last, ckpt = _ext.scan_fwd(x, dt, A, B, C, h0, chunk, scalar_decay, P)
    return y, h_last, ckpt


@_scan_fwd.register_fake
def _(x, dt, A, B, C, h0, chunk, scalar_decay, P):
    Bsz, T, E = x.shape
    N = A.shape[1]
    return x.new_empty(Bsz, T, E), x.new_empty(Bsz, E, N), x.new_empty(Bsz, -(-T // chunk), E, N)


@torch.library.custom_op("bmojo::scan_bwd", mutates_args=())
def _scan_bwd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, ckpt: Tensor, gy: Tensor, gh: Tensor,
              chunk: int, scalar_decay: bool, P: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    gx, gdt, gA, gB, gC, gh0 = _ext.scan_bwd(x, dt, A, B, C, ckpt, gy, gh, chunk, scalar_decay, P)
    return gx, gdt, gA, gB, gC, gh0


@_scan_bwd.register_fake
def _(x, dt, A, B, C, ckpt, gy, gh, chunk, scalar_decay, P):
    return (torch.empty_like(x), torch.empty_like(x), torch.empty_like(A), torch.empty_like(B), torch.empty_like(C),
            x.new_empty(x.shape[0], x.shape[2], A.shape[1]))


def _setup(ctx, inputs, output):
    x, dt, A, B, C, h0, chunk, scalar_decay, P = inputs
    ctx.chunk, ctx.scalar_decay, ctx.P = chunk, scalar_decay, P
    ctx.save_for_backward(x, dt, A, B, C, output[2])


def _backward(ctx, gy, gh, _gckpt):
    x, dt, A, B, C, ckpt = ctx.saved_tensors
    gy = gy.contiguous() if gy is not None else torch.zeros_like(x)
    gh = gh.contiguous() if gh is not None else x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    gx, gdt, gA, gB, gC, gh0 = _scan_bwd(x, dt, A, B, C, ckpt, gy, gh, ctx.chunk, ctx.scalar_decay, ctx.P)
    if ctx.P > 1:  # (B, T, E) -> (B, T, E / P): channels sharing a dt add their gradients
        gdt = gdt.view(*dt.shape, ctx.P).sum(-1)
    return gx, gdt, gA, gB, gC, gh0, None, None, None


_scan_fwd.register_autograd(_backward, setup_context=_setup)


def _scan(x, dt, A, B, C, h0, chunk, scalar_decay=False, P=1):
    y, h_last, _ = _scan_fwd(x, dt, A, B, C, h0, chunk, scalar_decay, P)
    return y, h_last


def selective_scan_cpp(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, chunk=64):
    """The reference's signature (bmojo.ops.scan.selective_scan_ref), on the C++ kernels."""
    Bsz, T, E = x.shape
    _check("selective_scan_cpp", x, dt, A, B, C)
    if T == 0:
        from bmojo.ops.scan import selective_scan

        return selective_scan(x, dt, A, B, C, D, initial_state, output_final_state)
    h0 = initial_state if initial_state is not None else x.new_zeros(Bsz, E, A.shape[1])
    y, h = _scan(x.contiguous(), dt.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
                 h0.float().contiguous(), chunk)
    if D is not None:
        y = y + x * D
    return y, (h if output_final_state else None)


def ssd_cpp(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, chunk=64):
    """Mamba-2 (SSD) through the fused scan: a head's scalar decay is the mamba1 decay of each of its P channels
    (A_h repeated over channels and states), and each head group runs as one scan over its channels.
    `ssd_ref`'s signature and shapes: x (B, T, H, P); dt (B, T, H); A (H,); B, C (B, T, G, N); D (H,)."""
    Bsz, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    _check("ssd_cpp", x, dt, A, B, C)
    if T == 0:
        from bmojo.ops.ssd import ssd_chunked

        return ssd_chunked(x, dt, A, B, C, D, initial_state, output_final_state)
    Hg = H // G
    h0 = initial_state if initial_state is not None else x.new_zeros(Bsz, H, P, N)
    ys, hs = [], []
    for g in range(G):
        heads = slice(g * Hg, (g + 1) * Hg)
        xe = x[:, :, heads].reshape(Bsz, T, Hg * P)  # (B, T, E) with channel e = head * P + p
        dth = dt[:, :, heads]  # (B, T, Hg): one dt per head, read by its P channels inside the kernel
        Ae = A[heads, None, None].expand(Hg, P, N).reshape(Hg * P, N)
        y, h = _scan(xe.contiguous(), dth.contiguous(), Ae.contiguous(), B[:, :, g].contiguous(),
                     C[:, :, g].contiguous(), h0[:, heads].reshape(Bsz, Hg * P, N).contiguous(), chunk, True, P)
        ys.append(y.view(Bsz, T, Hg, P))
        hs.append(h.view(Bsz, Hg, P, N))
    y = torch.cat(ys, dim=2) if G > 1 else ys[0]
    if D is not None:
        y = y + x * D[:, None]
    return y, (torch.cat(hs, dim=1) if G > 1 else hs[0]) if output_final_state else None
