"""Timing and memory measurement helpers shared by `bmojo bench` and benchmarks/."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import statistics
import time

import torch


def sync() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timeit(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall seconds of `repeats` calls after `warmup` untimed ones (CUDA work waited for)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def fwd_bwd(fn, inputs):
    """A closure running fn() -> (y, _) and y.sum().backward(), clearing the inputs' grads first."""
    def run():
        for x in inputs:
            x.grad = None
        y, _ = fn()
        y.sum().backward()
    return run


def scan_inputs(kind: str, B: int, T: int, E: int, N: int, P: int, g: torch.Generator,
                device="cpu") -> list[torch.Tensor]:
    """Inputs of a mamba1 scan (x, dt, A, B, C, D) or a mamba2 SSD (heads of width P), requiring grad."""
    if kind == "mamba1":
        t = [torch.randn(B, T, E, generator=g), torch.rand(B, T, E, generator=g) * 0.1 + 0.01,
             -torch.rand(E, N, generator=g) - 0.5, torch.randn(B, T, N, generator=g), torch.randn(B, T, N, generator=g),
             torch.randn(E, generator=g)]
    else:
        H = E // P
        t = [torch.randn(B, T, H, P, generator=g), torch.rand(B, T, H, generator=g) * 0.1 + 0.01,
             -torch.rand(H, generator=g) - 0.5, torch.randn(B, T, 1, N, generator=g),
             torch.randn(B, T, 1, N, generator=g), torch.randn(H, generator=g)]
    return [x.to(device).requires_grad_() for x in t]


def status_kb(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_extra_bytes(fn, device="cpu") -> int | None:
    """Peak memory that fn() adds above what is live before it: on CUDA from the allocator's statistics; on
    the CPU (Linux) the process's peak RSS, reset through /proc/self/clear_refs after returning freed heap to
    the OS.  None where unsupported."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except (OSError, AttributeError):
        return None
    before = status_kb("VmRSS")
    fn()
    peak = status_kb("VmHWM")
    return None if before is None or peak is None else max(0, peak - before) * 1024


def op_calls(fn) -> int:
    """Operator calls one fn() makes: the top-level ATen ops under the torch profiler (an op called by another op
    is not counted again).  On a GPU each is at least one kernel launch: the CPU measure of launch overhead."""
    import os
    import sys

    from torch.profiler import ProfilerActivity, profile

    sys.stderr.flush()
    saved = os.dup(2)  # the profiler's C++ side prints a line on start and stop: keep it off the terminal
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return sum(1 for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
