"""The glue to mamba_ssm and causal-conv1d (bmojo.ops.cuda), on the CPU: stand-in modules implement the
packages' documented interfaces (channels-first tensors) with our references, so a layout or argument slip in
the glue fails here even where the real CUDA kernels cannot run (their parity is tests/ops/test_cuda.py)."""
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from bmojo.ops import cuda
from bmojo.ops.conv import causal_conv1d_ref
from bmojo.ops.scan import selective_scan_ref
from tests.helpers import assert_close, seeded


def _selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """mamba_ssm's interface: u, delta (b, d, l); A (d, n); B, C (b, n, l); D (d,) -> out (b, d, l) and, with
    return_last_state, h (b, d, n).  Its maths written here in that layout, sharing no code with bmojo's scans:
    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,  y_t = C_t . h_t + D u_t."""
    assert u.dim() == 3 and B.shape == (u.shape[0], A.shape[1], u.shape[2]), "channels-first layout expected"
    assert z is None and delta_bias is None and not delta_softplus, "the glue applies these itself"
    b, d, L = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(L):
        dt = delta[:, :, t, None]  # (b, d, 1)
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1) + (D * u[:, :, t] if D is not None else 0))
    y = torch.stack(ys, -1)
    return (y, h) if return_last_state else y


def _causal_conv1d_fn(x, weight, bias=None, activation=None):
    """causal-conv1d's interface: x (b, d, l), weight (d, k) -> (b, d, l)."""
    K = weight.shape[1]
    y = F.conv1d(F.pad(x, (K - 1, 0)), weight[:, None], bias, groups=x.shape[1])
    return F.silu(y) if activation in ("silu", "swish") else y


@pytest.fixture
def fake_packages(monkeypatch):
    iface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    iface.selective_scan_fn = _selective_scan_fn
    for name in ("mamba_ssm", "mamba_ssm.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", iface)
    conv = types.ModuleType("causal_conv1d")
    conv.causal_conv1d_fn = _causal_conv1d_fn
    monkeypatch.setitem(sys.modules, "causal_conv1d", conv)


@pytest.mark.parametrize("final", [False, True])
def test_selective_scan_glue_matches_reference(fake_packages, final):
    g = seeded(0)
    Bsz, T, E, N = 2, 13, 6, 4
    ins = [torch.randn(Bsz, T, E, generator=g), torch.rand(Bsz, T, E, generator=g) + 0.05,
           -torch.rand(E, N, generator=g) - 0.3, torch.randn(Bsz, T, N, generator=g),
           torch.randn(Bsz, T, N, generator=g), torch.randn(E, generator=g)]
    y, h = cuda.selective_scan_cuda(*ins, output_final_state=final)
    y_ref, h_ref = selective_scan_ref(*ins, output_final_state=True)
    assert_close(y, y_ref, name="y")
    assert (h is None) == (not final)
    if final:
        assert_close(h, h_ref, name="h_T")


@pytest.mark.parametrize("T", [1, 2, 9])
def test_causal_conv1d_glue_matches_reference(fake_packages, T):
    g = seeded(1)
    x, w, b = torch.randn(2, T, 5, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
    y, s = cuda.causal_conv1d_cuda(x, w, b, output_final_state=True)
    y_ref, s_ref = causal_conv1d_ref(x, w, b, output_final_state=True)
    assert_close(y, y_ref, name="y")
    assert_close(s, s_ref, name="final conv state")
