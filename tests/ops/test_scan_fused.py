"""The fused C++ CPU selective scan equals the sequential reference, forward and every gradient, for odd
shapes (T not a multiple of the chunk, E not a multiple of the channel block), with and without carried
state; it saves chunk states only; other dtypes fall back to the PyTorch path.  Where a C++ compiler exists
the extension must build: a silent fallback there would hide a broken kernel."""
import shutil

import pytest
import torch

from bmojo.ops import scan_cpp
from bmojo.ops.scan import selective_scan_ref
from tests.helpers import seeded
from bmojo.ops.ssd import ssd_ref
from tests.ops.test_scans import NAMES, _compare, _run, _saved_numel, ssd_inputs

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the fused scan falls back to PyTorch")


def _inputs(Bsz, T, E, N, dtype=torch.float32, seed=1):
    g = seeded(seed)
    ts = [torch.randn(Bsz, T, E, generator=g), torch.rand(Bsz, T, E, generator=g) + 0.05,
          -torch.rand(E, N, generator=g) - 0.3, torch.randn(Bsz, T, N, generator=g),
          torch.randn(Bsz, T, N, generator=g), torch.randn(E, generator=g), torch.randn(Bsz, E, N, generator=g)]
    return [t.to(dtype).requires_grad_() for t in ts]


def test_extension_builds():
    assert scan_cpp.available(), scan_cpp.error()


@pytest.mark.parametrize("Bsz,T,E,N,chunk", [
    pytest.param(1, 1, 3, 4, 64, id="B1-T1-E3"), pytest.param(2, 37, 20, 5, 8, id="B2-T37-E20-K8"),
    pytest.param(3, 130, 33, 16, 64, id="B3-T130-E33-K64"), pytest.param(2, 64, 16, 16, 16, id="B2-T64-E16-K16")])
def test_fused_matches_reference(Bsz, T, E, N, chunk):
    inputs = _inputs(Bsz, T, E, N)
    _compare(_run(scan_cpp.selective_scan_cpp, inputs, {"chunk": chunk}),
             _run(selective_scan_ref, inputs, {}), NAMES)


def test_fused_without_state_and_final_state():
    x, dt, A, B, C, D, _ = _inputs(2, 21, 18, 4)
    y1, h1 = scan_cpp.selective_scan_cpp(x, dt, A, B, C, D, chunk=8)
    y2, _ = selective_scan_ref(x, dt, A, B, C, D)
    g1 = torch.autograd.grad(y1.sum(), (x, dt, A, B, C))
    g2 = torch.autograd.grad(y2.sum(), (x, dt, A, B, C))
    assert h1 is None
    _compare([y1, *g1], [y2, *g2], ["y", "dx", "ddt", "dA", "dB", "dC"])


def test_fused_saves_chunk_states_only():
    Bsz, T, E, N = 1, 128, 16, 8
    x, dt, A, B, C, _, _ = _inputs(Bsz, T, E, N)
    saved = _saved_numel(scan_cpp.selective_scan_cpp, x, dt, A, B, C, chunk=32)
    assert saved < 2 * Bsz * T * E + 2 * Bsz * T * N + E * N + Bsz * (T // 32) * E * N + 1, saved


def test_other_dtypes_are_an_error_not_a_silent_fallback():
    """The C++ kernels compute float32 CPU tensors; anything else names itself (the backend chooses another kernel
    for such a model before any call: tests/ops/test_backend.py)."""
    inputs = _inputs(2, 19, 5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="selective_scan_cpp.*float32.*torch.float64"):
        scan_cpp.selective_scan_cpp(*inputs)
    x, dt, A, B, C = ssd_inputs(1, 4, 2, 4, 1, 4, seed=0)[:5]
    with pytest.raises(ValueError, match="ssd_cpp.*torch.float64"):
        scan_cpp.ssd_cpp(x, dt.double(), A, B, C)


def test_an_empty_sequence_runs_the_pytorch_path():
    x, dt, A, B, C, D, h0 = _inputs(2, 0, 5, 3)
    y, h = scan_cpp.selective_scan_cpp(x, dt, A, B, C, D, h0, output_final_state=True)
    assert y.shape == (2, 0, 5) and torch.equal(h, h0)


@pytest.mark.parametrize("Bsz,T,H,P,G,N", [pytest.param(1, 1, 2, 4, 1, 4, id="T1"),
                                           pytest.param(2, 37, 4, 8, 2, 5, id="T37-G2"),
                                           pytest.param(2, 70, 3, 16, 1, 16, id="T70-H3")])
def test_ssd_fused_matches_reference(Bsz, T, H, P, G, N):
    inputs = ssd_inputs(Bsz, T, H, P, G, N, seed=3)
    _compare(_run(scan_cpp.ssd_cpp, inputs, {}), _run(ssd_ref, inputs, {}), NAMES)


@pytest.mark.parametrize("scalar_decay,P", [(False, 1), (True, 4)])
def test_custom_ops_pass_torch_opcheck(scalar_decay, P):
    """bmojo::scan_fwd / scan_bwd are registered custom ops (torch.compile traces through them): their
    schema, fake (meta) kernels and autograd registration agree with the real kernels."""
    assert scan_cpp.available()
    g = seeded(7)
    Bsz, T, E, N = 2, 19, 8, 4
    x, B, C = torch.randn(Bsz, T, E, generator=g), torch.randn(Bsz, T, N, generator=g), torch.randn(Bsz, T, N, generator=g)
    dt = torch.rand(Bsz, T, E // P, generator=g) * 0.2 + 0.01
    A = -torch.rand(E, N, generator=g) - 0.3
    h0 = torch.randn(Bsz, E, N, generator=g)
    args = [t.requires_grad_() for t in (x, dt, A, B, C, h0)]
    torch.library.opcheck(scan_cpp._scan_fwd, (*args, 8, scalar_decay, P))
