"""CUDA kernels from the optional `gpu` extra (mamba_ssm's selective scan, causal-conv1d), with our signatures.

Used by impl=fused when the tensors are on a CUDA device and the packages import; otherwise (CPU tensors, the
packages missing, or an initial state the kernels cannot start from) the caller's next path runs.  Nothing
here is imported on a CPU-only machine: the imports happen inside the functions, once.
"""
from __future__ import annotations

import functools
import importlib.util
import logging

import torch

log = logging.getLogger("bmojo")


@functools.cache
def has(package: str) -> bool:
    ok = torch.cuda.is_available() and importlib.util.find_spec(package) is not None
    log.info("bmojo: CUDA kernels from %s: %s", package, "available" if ok else "not available")
    return ok


def selective_scan_cuda(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False):
    """mamba_ssm's fused scan.  x, dt (B, T, E); A (E, N); B, C (B, T, N); the kernel takes channels first."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    out = selective_scan_fn(x.transpose(1, 2), dt.transpose(1, 2), A.float(), B.transpose(1, 2), C.transpose(1, 2),
                            D.float() if D is not None else None, return_last_state=output_final_state)
    y, last = out if output_final_state else (out, None)
    return y.transpose(1, 2), last


def causal_conv1d_cuda(x, weight, bias=None, initial_state=None, output_final_state=False):
    """causal-conv1d's kernel for (B, T, C) inputs; the final state (last K-1 inputs) is sliced from x."""
    from causal_conv1d import causal_conv1d_fn

    K = weight.shape[1]
    y = causal_conv1d_fn(x.transpose(1, 2), weight, bias).transpose(1, 2)
    final = None
    if output_final_state:
        xt = x.transpose(1, 2)  # (B, C, T)
        final = torch.nn.functional.pad(xt, (max(0, K - 1 - xt.shape[2]), 0))[..., -(K - 1):] if K > 1 else \
            xt[..., :0]
    return y, final
