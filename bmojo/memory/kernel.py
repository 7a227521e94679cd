"""The decode-time store search in C (`csrc/store_scan.c`): a scan of 8-bit codes of the keys with an error bound,
then an exact re-score, so its result is the exact top-k (the source explains the bound).

It is plain C called through ctypes: built with the system C compiler on first use (under a second), cached in
$BMOJO_CACHE (default ~/.cache/bmojo) under a name that hashes the source and flags.  `available()` is False,
with the reason in `error()`, when there is no compiler, the build fails, the CPU lacks AVX2/FMA, or
BMOJO_STORE_KERNEL=0; the index then searches with PyTorch (the reference the tests tie this to).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger("bmojo")
SOURCE = Path(__file__).parent / "csrc" / "store_scan.c"
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c11"]
_lib = None
_error: str | None = None
_P = ctypes.c_void_p
_I = ctypes.c_int64


def cache_dir() -> Path:
    return Path(os.environ.get("BMOJO_CACHE") or Path.home() / ".cache" / "bmojo")


def _build() -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler on PATH (cc, gcc or clang)")
    src = SOURCE.read_bytes()
    tag = hashlib.sha256(src + " ".join([cc, *FLAGS, platform.machine(), platform.node()]).encode()).hexdigest()[:16]
    out = cache_dir() / f"store_scan-{tag}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # build aside, then rename: safe in parallel
            part = Path(tmp) / out.name
            res = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(part), "-lm"], capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"{cc} failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
            os.replace(part, out)
    return out


def available() -> bool:
    """Build (once per machine) and load the kernel; False, with the reason in `error()`, if it cannot run."""
    global _lib, _error
    if _lib is None and _error is None:
        if os.environ.get("BMOJO_STORE_KERNEL", "1") == "0":
            _error = "switched off by BMOJO_STORE_KERNEL=0"
        else:
            try:
                lib = ctypes.CDLL(str(_build()))
                if not lib.bmojo_store_simd():
                    raise RuntimeError("this CPU (or compiler) lacks AVX2 or FMA")
                lib.bmojo_store_search.argtypes = [_P, _P, _P, _I, _P, _P, _P, _P]
                lib.bmojo_store_search.restype = ctypes.c_int
                _lib = lib
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                _error = str(e)
        if _error:
            log.info("bmojo: the C store search is unavailable (%s); searching with PyTorch", _error)
    return _lib is not None


def error() -> str | None:
    return _error


class Index(ctypes.Structure):
    """The C side's view of a LayerIndex (csrc/store_scan.c, struct Index): its tensors' addresses and sizes, kept
    by the index (refreshed when it grows), where the store's values are read, and the hint (each head's last
    top-k, where the next scan starts)."""

    _fields_ = [("code", _P), ("scale", _P), ("k32", _P), ("pos", _P), ("seen", _P), ("ids", _P),
                ("n", _I), ("cap", _I), ("Hk", _I), ("G", _I), ("Dh", _I), ("topk", _I),
                ("vbase", _P), ("rec", _I), ("voff", _I), ("written", _I), ("hint", _P)]


def search(q: torch.Tensor, limits: list[int], X: Index, topk: int, values=None, scores: bool = True):
    """q (nq, H, Dh) float32 contiguous, query r seeing positions <= limits[r], X the Index of a LayerIndex with
    its 8-bit codes -> (ids (nq, H, topk), keys (nq, H, topk, Dh), scores (nq, H, topk) or None without `scores`,
    values, late), best first, -1 / 0 / -inf past the visible entries; None when q is not finite.
    values = (address, record bytes, value offset, records written) of a map of the store's float32 records also
    reads the values (nq, H, topk, Dh) of the ids < written; `late` counts the found ids >= written, whose values
    are left zero (read them elsewhere).  Without `values`: None, 0."""
    nq, H, Dh = q.shape
    X.G, X.topk = H // X.Hk, topk
    X.vbase, X.rec, X.voff, X.written = values if values is not None else (None, 0, 0, 0)
    ids = torch.empty(nq, H, topk, dtype=torch.int64)
    keys = torch.empty(nq, H, topk, Dh)
    s = torch.empty(nq, H, topk) if scores else None
    vals = torch.empty(nq, H, topk, Dh) if values is not None else None
    rc = _lib.bmojo_store_search(ctypes.byref(X), q.data_ptr(), (ctypes.c_int64 * nq)(*limits), nq, ids.data_ptr(),
                                 keys.data_ptr(), s.data_ptr() if scores else None,
                                 vals.data_ptr() if vals is not None else None)
    if rc == -3:
        return None
    if rc < 0:
        raise MemoryError("bmojo store search: out of memory")
    return ids, keys, s, vals, rc
