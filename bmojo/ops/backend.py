"""The backend: which kernel computes the scan, the SSD, the causal conv and the windowed attention, chosen once.

`ModelConfig.impl` is resolved, for the device and dtype the model's parameters are on, into one `Backend`, logged
once (`bmojo -v`), and every mixer calls its kernels; nothing inside a call switches by sequence length, dtype or
environment.  A model resolves it again when it moves (`BMojoLM.to`), so `BMojoLM(cfg).to("cuda")` runs CUDA
kernels.  A kernel handed tensors it cannot compute (another device or dtype than it was chosen for) raises,
naming why, instead of silently running something else.

  ref    the sequential fp32 references (loops over T): the ground truth of the tests
  fast   PyTorch: chunked scans, chunked SSD, F.conv1d, chunked SDPA windowed attention
  fused  compiled kernels: on the CPU the C++ scans (float32 only); on CUDA mamba_ssm's scan and causal-conv1d's
         conv for calls from an empty state and flex_attention for whole sequences from position 0 (a
         continuation, whose state those kernels cannot start from, runs the PyTorch path), when installed
  auto   fused where it can serve the model's device and dtype, fast elsewhere
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from bmojo.ops import scan_cpp
from bmojo.ops.attention import window_attention, window_attention_fused, window_attention_ref
from bmojo.ops.conv import causal_conv1d, causal_conv1d_fused, causal_conv1d_ref
from bmojo.ops.scan import selective_scan, selective_scan_fused, selective_scan_ref
from bmojo.ops.ssd import ssd_chunked, ssd_ref

log = logging.getLogger("bmojo")


class BackendError(ValueError):
    """A kernel asked for something it cannot compute; the message says which kernel and why."""


@dataclass(frozen=True)
class Backend:
    impl: str  # the resolved kind: ref | fast | fused
    device: str  # cpu | cuda
    dtype: torch.dtype
    scan: Callable = field(repr=False)  # mamba1 selective scan, ops.scan signature
    ssd: Callable = field(repr=False)  # mamba2 SSD, ops.ssd signature
    conv: Callable = field(repr=False)  # causal depthwise conv, ops.conv signature
    window_attention: Callable = field(repr=False)  # ops.attention.window_attention signature
    names: tuple = ()  # (kernel, what computes it), for the log and `bmojo -v`

    def describe(self) -> str:
        return f"impl={self.impl} on {self.device}/{str(self.dtype).removeprefix('torch.')}: " + \
            ", ".join(f"{k}={v}" for k, v in self.names)


def _strict_cpu_float32(fn, name: str):
    """The C++ kernels compute float32 CPU tensors; anything else is an error here, not a silent fallback.  Under
    CPU autocast they compute in float32, as autocast does for the ops it keeps in float32."""
    @functools.wraps(fn)
    def run(x, *args, **kw):
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):  # any input may be bf16 (a linear's output)
            up = lambda a: a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a  # noqa: E731
            x, args, kw = up(x), tuple(map(up, args)), {k: up(v) for k, v in kw.items()}
        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise BackendError(f"{name} (impl=fused, chosen for cpu/float32) got {x.dtype} on {x.device}: resolve "
                               "the backend for this device and dtype (BMojoLM does when moved with .to()), or use "
                               "impl=auto or fast")
        return fn(x, *args, **kw)
    return run


def _fused(device: str, dtype: torch.dtype) -> Backend | str:
    """The fused backend for (device, dtype), or why it cannot serve them."""
    if device == "cpu":
        if dtype != torch.float32:
            return f"the C++ scans compute float32 only, the model is {str(dtype).removeprefix('torch.')}"
        if not scan_cpp.available():
            return f"the C++ scans are unavailable ({scan_cpp.error()})"
        return Backend("fused", device, dtype, _strict_cpu_float32(scan_cpp.selective_scan_cpp, "the C++ scan"),
                       _strict_cpu_float32(scan_cpp.ssd_cpp, "the C++ SSD"), causal_conv1d, window_attention,
                       (("scan", "C++ (bmojo::scan)"), ("ssd", "C++ (bmojo::scan, scalar decay)"),
                        ("conv", "PyTorch F.conv1d"), ("window_attention", "chunked SDPA")))
    if device == "cuda":
        from bmojo.ops import cuda, flex

        scan = "mamba_ssm from an empty state, else chunked PyTorch" if cuda.has("mamba_ssm") else "chunked PyTorch"
        conv = "causal-conv1d from an empty state, else F.conv1d" if cuda.has("causal_conv1d") else "F.conv1d"
        attn = "flex_attention from position 0, else chunked SDPA" if flex.available() else "chunked SDPA"
        return Backend("fused", device, dtype, selective_scan_fused, ssd_chunked, causal_conv1d_fused,
                       window_attention_fused, (("scan", scan), ("ssd", "chunked PyTorch"), ("conv", conv),
                                                ("window_attention", attn)))
    return f"no compiled kernels for device {device!r}"


def _plain(impl: str, device: str, dtype: torch.dtype) -> Backend:
    if impl == "ref":
        return Backend("ref", device, dtype, selective_scan_ref, ssd_ref, causal_conv1d_ref, window_attention_ref,
                       (("scan", "sequential reference"), ("ssd", "sequential reference"),
                        ("conv", "sequential reference"), ("window_attention", "per-query reference")))
    return Backend("fast", device, dtype, selective_scan, ssd_chunked, causal_conv1d, window_attention,
                   (("scan", "chunked PyTorch"), ("ssd", "chunked PyTorch"), ("conv", "PyTorch F.conv1d"),
                    ("window_attention", "chunked SDPA")))


_logged: set = set()


def resolve(impl: str, device="cpu", dtype: torch.dtype = torch.float32) -> Backend:
    """impl (ref | fast | fused | auto) for parameters on `device` with `dtype` -> the Backend, logged once."""
    device = torch.device(device).type
    if impl in ("ref", "fast"):
        backend = _plain(impl, device, dtype)
    elif impl in ("fused", "auto"):
        backend = _fused(device, dtype)
        if isinstance(backend, str):
            if impl == "fused":
                raise BackendError(f"ModelConfig.impl='fused' cannot run here: {backend}; use impl='auto' (the "
                                   "fused kernels where they serve, PyTorch elsewhere) or 'fast'")
            why, plain = backend, _plain("fast", device, dtype)
            backend = dataclasses.replace(plain, names=plain.names + (("fused unavailable", why),))
    else:
        raise BackendError(f"ModelConfig.impl={impl!r}: allowed are ref, fast, fused, auto")
    key = (impl, backend.describe())
    if key not in _logged:
        log.info("bmojo: backend (asked impl=%s) %s", impl, backend.describe())
        _logged.add(key)
    return backend


def backend_of(impl) -> Backend:
    """A mixer's `impl` argument (a Backend, or a name resolved for cpu/float32) -> the Backend."""
    return impl if isinstance(impl, Backend) else resolve(impl)
