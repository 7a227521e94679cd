"""Fast selective scans (mamba1 chunked with a recomputing backward, mamba2 chunked SSD) and the causal conv
equal their sequential fp32 references, forward and every gradient, with and without carried state."""
import pytest
import torch

from bmojo.ops.conv import causal_conv1d, causal_conv1d_ref, causal_conv1d_step
from bmojo.ops.scan import selective_scan, selective_scan_ref, selective_scan_step
from bmojo.ops.ssd import ssd_chunked, ssd_ref, ssd_step
from tests.helpers import assert_close, seeded

CASES = [pytest.param(1, 1, 4, id="B1-T1-L4"), pytest.param(2, 7, 4, id="B2-T7-L4"),
         pytest.param(2, 8, 8, id="B2-T8-L8"), pytest.param(2, 37, 8, id="B2-T37-L8"),
         pytest.param(3, 70, 16, id="B3-T70-L16")]


def _run(fn, inputs, kw):
    for t in inputs:
        t.grad = None
    y, h = fn(*inputs[:-1], initial_state=inputs[-1], output_final_state=True, **kw)
    (y.pow(2).sum() + (h * torch.linspace(-1, 1, h.numel()).view_as(h)).sum()).backward()
    return [y, h] + [t.grad.clone() for t in inputs]


NAMES = ["y", "h_T", "dx", "ddt", "dA", "dB", "dC", "dD", "dh0"]


def ssd_inputs(Bsz, T, H, P, G, N, seed):
    """x, dt, A, B, C, D, h0 of a mamba2 scan, requiring grad."""
    g = seeded(seed)
    inputs = [torch.randn(Bsz, T, H, P, generator=g), torch.rand(Bsz, T, H, generator=g) + 0.05,
              -torch.rand(H, generator=g) - 0.3, torch.randn(Bsz, T, G, N, generator=g),
              torch.randn(Bsz, T, G, N, generator=g), torch.randn(H, generator=g),
              torch.randn(Bsz, H, P, N, generator=g)]
    return [t.requires_grad_() for t in inputs]


def _compare(fast, ref, names):
    for a, b, n in zip(fast, ref, names):
        assert_close(a, b, rtol=1e-5, name=n)


@pytest.mark.parametrize("Bsz,T,L", CASES)
def test_mamba1_fast_matches_reference(Bsz, T, L):
    g = seeded(1)
    E, N = 6, 5
    inputs = [torch.randn(Bsz, T, E, generator=g), torch.rand(Bsz, T, E, generator=g) + 0.05,
              -torch.rand(E, N, generator=g) - 0.3, torch.randn(Bsz, T, N, generator=g),
              torch.randn(Bsz, T, N, generator=g), torch.randn(E, generator=g), torch.randn(Bsz, E, N, generator=g)]
    for t in inputs:
        t.requires_grad_()
    names = ["y", "h_T", "dx", "ddt", "dA", "dB", "dC", "dD", "dh0"]
    _compare(_run(selective_scan, inputs, {"chunk": L}), _run(selective_scan_ref, inputs, {}), names)


@pytest.mark.parametrize("Bsz,T,L", CASES)
@pytest.mark.parametrize("G", [1, 2])
def test_ssd_chunked_matches_reference(Bsz, T, L, G):
    inputs = ssd_inputs(Bsz, T, 4, 3, G, 5, seed=2)
    _compare(_run(ssd_chunked, inputs, {"chunk": L}), _run(ssd_ref, inputs, {}), NAMES)


@pytest.mark.parametrize("T", [1, 3, 9, 33])
def test_conv_fast_matches_reference(T):
    g = seeded(3)
    Bsz, Ch, K = 2, 5, 4
    inputs = [torch.randn(Bsz, T, Ch, generator=g), torch.randn(Ch, K, generator=g), torch.randn(Ch, generator=g),
              torch.randn(Bsz, Ch, K - 1, generator=g)]
    for t in inputs:
        t.requires_grad_()
    _compare(_run(causal_conv1d, inputs, {}), _run(causal_conv1d_ref, inputs, {}),
             ["y", "state", "dx", "dw", "db", "dstate0"])


def test_steps_match_references():
    """The one-token recurrences used by decoding equal the references token by token."""
    g = seeded(4)
    Bsz, T, E, N, H, P, G = 2, 9, 6, 4, 3, 2, 1
    x, dt = torch.randn(Bsz, T, E, generator=g), torch.rand(Bsz, T, E, generator=g) + 0.05
    A, Bm, Cm, D = -torch.rand(E, N, generator=g) - 0.3, torch.randn(Bsz, T, N, generator=g), \
        torch.randn(Bsz, T, N, generator=g), torch.randn(E, generator=g)
    y_ref, _ = selective_scan_ref(x, dt, A, Bm, Cm, D)
    h = torch.zeros(Bsz, E, N)
    ys = torch.stack([selective_scan_step(x[:, t], dt[:, t], A, Bm[:, t], Cm[:, t], D, h) for t in range(T)], 1)
    assert_close(ys, y_ref, name="mamba1 step")

    x2, dt2 = torch.randn(Bsz, T, H, P, generator=g), torch.rand(Bsz, T, H, generator=g) + 0.05
    A2, B2, C2, D2 = -torch.rand(H, generator=g) - 0.3, torch.randn(Bsz, T, G, N, generator=g), \
        torch.randn(Bsz, T, G, N, generator=g), torch.randn(H, generator=g)
    y2_ref, _ = ssd_ref(x2, dt2, A2, B2, C2, D2)
    h2 = torch.zeros(Bsz, H, P, N)
    ys2 = torch.stack([ssd_step(x2[:, t], dt2[:, t], A2, B2[:, t], C2[:, t], D2, h2) for t in range(T)], 1)
    assert_close(ys2, y2_ref, name="ssd step")

    w, b = torch.randn(E, 4, generator=g), torch.randn(E, generator=g)
    yc_ref, _ = causal_conv1d_ref(x, w, b)
    st = torch.zeros(Bsz, E, 3)
    ysc = torch.stack([causal_conv1d_step(x[:, t], st, w, b) for t in range(T)], 1)
    assert_close(ysc, yc_ref, name="conv step")


def _saved_numel(fn, *args, **kw) -> int:
    total = []

    def pack(t):
        total.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kw)
    return sum(total)


def test_mamba1_fast_backward_does_not_store_all_states():
    """The fast path saves inputs and chunk-start states, never the (B, T, E, N) states the reference keeps."""
    Bsz, T, E, N = 1, 64, 8, 4
    x = torch.randn(Bsz, T, E, requires_grad=True)
    args = (x, torch.rand(Bsz, T, E) + 0.1, -torch.rand(E, N) - 0.3, torch.randn(Bsz, T, N), torch.randn(Bsz, T, N))
    fast = _saved_numel(selective_scan, *args, chunk=16)
    ref = _saved_numel(selective_scan_ref, *args)
    assert fast < Bsz * T * E * N, f"fast path saved {fast} elements"
    assert ref >= Bsz * T * E * N, f"reference saved {ref} elements"
