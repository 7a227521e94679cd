"""Process-level CPU settings for bmojo's own commands (never applied on `import bmojo`).

glibc serves allocations above its mmap threshold (at most 32 MiB by default) with fresh mmap pages and
returns them to the OS on free, so every training step page-faults its large activations again.
Raising the threshold and the trim threshold keeps freed memory for reuse.  Measured by
benchmarks/core_speed.py (see README): the B'MOJO layer's forward + backward at B=8, T=8192 runs about
2x faster, and its cost grows linearly in T as the algorithm does.  The price: the process keeps its peak
heap instead of returning it to the OS between steps.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger("bmojo")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
_done = False


def tune_cpu_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Keep freed large blocks in the heap (glibc only).  Returns True when the settings were applied."""
    global _done
    if _done:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
    except (OSError, AttributeError):
        return False
    _done = ok
    log.info("bmojo: glibc malloc thresholds raised (mmap %d, trim %d): %s", mmap_threshold, trim_threshold, ok)
    return ok


def machine() -> dict:
    """What the numbers were measured on: CPU model, cores, torch threads and versions."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "python": platform.python_version()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out
