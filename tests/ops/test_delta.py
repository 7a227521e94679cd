"""The delta-rule errors (bmojo.ops.delta): the chunked fast path equals the token-by-token reference."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bmojo.ops.delta import delta_errors, delta_errors_ref


def _inputs(B, T, Dk, Dv, seed, unit=True):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, T, Dk, generator=g)
    k = F.normalize(k, dim=-1) if unit else 0.5 * k
    return k, torch.randn(B, T, Dv, generator=g), torch.randn(B, Dv, Dk, generator=g)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(0, 70), Dk=st.integers(1, 7), Dv=st.integers(1, 5),
       chunk=st.integers(1, 20), split=st.floats(0, 1), with_state=st.booleans(), seed=st.integers(0, 2**16))
def test_fast_matches_reference(B, T, Dk, Dv, chunk, split, with_state, seed):
    """Every length, chunk and width, from zero or a given state, and continued from the state after a split."""
    k, v, S0 = _inputs(B, T, Dk, Dv, seed)
    S0 = S0 if with_state else None
    e_ref, S_ref = delta_errors_ref(k, v, S0)
    e, S = delta_errors(k, v, S0, chunk=chunk)
    torch.testing.assert_close(e, e_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(S, S_ref, atol=1e-4, rtol=1e-4)
    n = int(split * T)  # a continuation: the first n tokens, then the rest from the state they left
    e1, S1 = delta_errors(k[:, :n], v[:, :n], S0, chunk=chunk)
    e2, S2 = delta_errors(k[:, n:], v[:, n:], S1, chunk=chunk)
    torch.testing.assert_close(torch.cat([e1, e2], 1), e_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(S2, S_ref, atol=1e-4, rtol=1e-4)


def test_the_memory_recalls_what_it_learned():
    """The maths, not just agreement: after (k, v) with a unit key the memory predicts v for k exactly (error 0 on
    a repeat), a new orthogonal key predicts 0 (error = v), and a zero key changes nothing."""
    k = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]])
    v = torch.tensor([[[3.0], [5.0], [3.0], [7.0]]])
    for op in (delta_errors, delta_errors_ref):
        e, S = op(k, v, chunk=3)
        assert torch.allclose(e[0, :, 0], torch.tensor([3.0, 5.0, 0.0, 7.0])), op.__name__
        assert torch.allclose(S, torch.tensor([[[3.0, 5.0]]])), op.__name__


def test_long_sequences_stay_bounded():
    """Unit keys: each update is a contraction, so 4,096 tokens in chunks of 64 match the float64 reference."""
    k, v, _ = _inputs(1, 4096, 8, 4, seed=3)
    e_ref, S_ref = delta_errors_ref(k, v)
    e, S = delta_errors(k, v, chunk=64)
    torch.testing.assert_close(e, e_ref, atol=1e-3, rtol=1e-3)
    assert torch.isfinite(S).all() and (S - S_ref).abs().max() < 1e-3


def test_bad_shapes_are_named():
    k, v, S0 = _inputs(1, 4, 3, 2, seed=0)
    with pytest.raises(ValueError, match="share"):
        delta_errors(k, v[:, :3])
    with pytest.raises(ValueError, match="state must be"):
        delta_errors(k, v, S0.transpose(1, 2))
    with pytest.raises(ValueError, match="chunk"):
        delta_errors(k, v, chunk=0)


def test_float64_inputs_are_computed_in_float64():
    """The associative scorer relies on this: structural ties (a zero prediction scores exactly 1) stay exact."""
    k, v, S0 = _inputs(2, 33, 5, 4, seed=7)
    e, S = delta_errors(k.double(), v.double(), S0.double(), chunk=8)
    e_ref, S_ref = delta_errors_ref(k.double(), v.double(), S0.double())
    assert e.dtype == S.dtype == torch.float64
    assert (e - e_ref.double()).abs().max() < 1e-6 and (S - S_ref.double()).abs().max() < 1e-6
    e0, _ = delta_errors(torch.zeros(1, 3, 2, dtype=torch.float64), v[:1, :3].double())
    assert torch.equal(e0, v[:1, :3].double())  # zero keys: nothing is predicted, bit for bit
