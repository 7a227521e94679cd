"""Transformers, SWA and B'MOJO-F are special cases of the B'MOJO layer; the dense oracle
(bmojo_minimal.py) pins the maths of every variant."""
import pytest
import torch

from bmojo.bmojo_minimal import bmojo_layer_minimal, prefix_topk_memory
from bmojo.layers.attention import Attention
from bmojo.layers.bmojo import BMojoMixer
from tests.helpers import LENGTHS, W, assert_close, randomise_extras, seeded, tiny

LEN = [pytest.param(T, id=k) for k, T in LENGTHS.items()]


def _x(T, seed=1):
    return torch.randn(2, T, 32, generator=seeded(seed))


def _randomise(m, seed=0):
    torch.manual_seed(seed)
    return randomise_extras(m)


@pytest.mark.parametrize("T", LEN)
def test_bmojo_without_ssm_and_memory_is_swa(T):
    """The paper's layer (the default adds the SSM output to the residual, so its SSM is never off)."""
    cfg = tiny("bmojo-paper", fading=False, memory_size=0)
    b = _randomise(BMojoMixer(cfg, 0, memory=True))
    assert b.ssm is None
    swa = Attention(cfg, window=W)
    swa.load_state_dict(b.state_dict())  # the same parameters, nothing more
    x = _x(T)
    assert_close(b(x)[0], swa(x)[0], name="bmojo(off) vs swa")


@pytest.mark.parametrize("T", LEN)
@pytest.mark.parametrize("kind", ["S", "F", "B"])
def test_window_at_least_T_is_full_attention(T, kind):
    for Wbig in (T, T + 3):
        cfg = tiny("bmojo-paper", pattern=kind, window=Wbig, chunk=4)  # no SSM residual: attention alone
        full = Attention(cfg, window=None)
        m = Attention(cfg, window=Wbig) if kind == "S" else _randomise(BMojoMixer(cfg, 0, memory=kind == "B"))
        full.load_state_dict({k: v for k, v in m.state_dict().items() if k in full.state_dict()})
        x = _x(T)
        assert_close(m(x)[0], full(x)[0], name=f"{kind} W={Wbig}")


@pytest.mark.parametrize("T", LEN)
@pytest.mark.parametrize("tie", [True, False])
def test_bmojo_f_is_one_dense_masked_softmax(T, tie):
    m = _randomise(BMojoMixer(tiny("bmojo-f", tie_fading=tie), 0, memory=False))
    x = _x(T)
    assert_close(m(x)[0], bmojo_layer_minimal(m, x), name="bmojo-f vs dense")


@pytest.mark.parametrize("T", LEN)
@pytest.mark.parametrize("selector", ["innovation", "norm", "random", "recency", "none", "innovation+gate",
                                      "none+gate-logit", "innovation+gate-logit", "innovation+fading-gate", "assoc",
                                      "innovation+null-key"])
def test_bmojo_matches_dense_oracle(T, selector):
    base = selector.split("+")[0]
    m = _randomise(BMojoMixer(tiny("bmojo", selector=base, ssm_residual=base == "norm",
                                   selection_gate="+gate" in selector,
                                   gate_read="logit" if selector.endswith("logit") else "value",
                                   fading_gate=-1.5 if selector.endswith("fading-gate") else None,
                                   null_key=selector.endswith("null-key")), 0))
    x = _x(T)
    assert_close(m(x)[0], bmojo_layer_minimal(m, x), name=f"bmojo[{selector}] vs dense")


@pytest.mark.parametrize("T", LEN)
@pytest.mark.parametrize("C", [1, 4, W])
@pytest.mark.parametrize("selector", ["innovation", "assoc"])
def test_memory_read_exactness(T, C, selector):
    """Fading off and M >= T: every past token is in the window or in memory -> full causal attention (the
    paper's layer: no SSM output added to the residual), whatever the scorer."""
    cfg = tiny("bmojo-paper", fading=False, memory_size=T, chunk=C, selector=selector)
    b = _randomise(BMojoMixer(cfg, 0))
    full = Attention(cfg, window=None)
    full.load_state_dict({k: v for k, v in b.state_dict().items() if k in full.state_dict()})
    x = _x(T)
    assert_close(b(x)[0], full(x)[0], name="bmojo(M>=T, no fading) vs full attention")


def test_oracle_memory_is_not_trivial():
    """Guard: in the oracle tests the memory really evicts (M < tokens before the last chunk)."""
    T = LENGTHS["gt4W"]
    in_mem = prefix_topk_memory(torch.rand(1, T, generator=seeded(0)), 4, 6)
    assert in_mem[0, -1].sum() == 6 and (T // 4) * 4 > 6


def test_predictor_never_changes_main_gradients():
    """The innovation predictor P is trained by its own loss only; the output does not depend on it."""
    m = _randomise(BMojoMixer(tiny("bmojo"), 0)).train()
    x = _x(40).requires_grad_()
    out = m(x, return_state=False)
    y, aux_loss = out[0], out.aux_loss
    assert aux_loss is not None and aux_loss.requires_grad
    grads = torch.autograd.grad(y.sum(), [m.selection.scorer.predictor.weight, x], allow_unused=True)
    assert grads[0] is None, "the main output reached the predictor"
    aux_grads = torch.autograd.grad(aux_loss, [p for p in m.parameters()] + [x], allow_unused=True)
    names = [n for n, _ in m.named_parameters()] + ["x"]
    touched = [n for n, g in zip(names, aux_grads) if g is not None and g.abs().max() > 0]
    assert touched == ["selection.scorer.predictor.weight"], f"aux loss reached {touched}"


@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_partial_rope_matches_dense_oracle(fraction):
    """rope_fraction < 1: only the highest-frequency pairs rotate (the oracle rotates the same pairs)."""
    m = _randomise(BMojoMixer(tiny("bmojo", rope_fraction=fraction), 0))
    x = _x(LENGTHS["gt4W"])
    assert_close(m(x)[0], bmojo_layer_minimal(m, x), name=f"rope_fraction={fraction} vs dense")


def test_unrotated_pairs_carry_no_position():
    from bmojo.ops.rope import rope_cos_sin

    cos, sin = rope_cos_sin(torch.arange(0, 100000, 997), 16, 10000.0, torch.float32, fraction=0.25)
    assert torch.all(cos[..., 2:8] == 1) and torch.all(sin[..., 2:8] == 0)  # pairs 2..7 never rotate
    assert not torch.all(cos[..., :2] == 1)


@pytest.mark.parametrize("impl", ["ref", "fast", "fused"])
@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_ssm_equals_its_equations(kind, impl):
    """The oracle's SSM (a loop over time from the equations, with the module's weights only) equals the mixer's
    SSM on every backend, so the B'MOJO oracle checks the fast scans too."""
    from bmojo.bmojo_minimal import ssm_minimal
    from bmojo.layers.ssm import make_ssm

    torch.manual_seed(0)
    ssm = randomise_extras(make_ssm(tiny("mamba", ssm_kind=kind, n_groups=2 if kind == "mamba2" else 1), impl))
    x = _x(29)
    with torch.no_grad():
        assert_close(ssm(x, return_state=False)[0], ssm_minimal(ssm, x), rtol=1e-5, name=f"{kind} {impl}")
