"""Every mixer: fast = reference (forward and all gradients), parallel = prefix forward + step per token,
state carried across two forwards, causality, and typed state checks."""
import pytest
import torch

from bmojo.layers.attention import AttentionState
from bmojo.models.block import make_mixer
from tests.helpers import LENGTHS, W, assert_close, assert_grads_close, randomise_extras, seeded, tiny

MIXERS = {  # name -> (preset, layer index, config overrides)
    "full-attn": ("transformer", 0, {}),
    "swa": ("swa", 0, {}),
    "mamba1": ("mamba", 0, {}),
    "mamba2": ("mamba", 0, {"ssm_kind": "mamba2"}),
    "bmojo-f": ("bmojo-f", 0, {}),
    "bmojo": ("bmojo", 0, {}),
    "bmojo-norm": ("bmojo", 0, {"selector": "norm"}),
    "bmojo-random": ("bmojo", 0, {"selector": "random"}),
    "bmojo-assoc-gate": ("bmojo", 0, {"selector": "assoc", "selection_gate": True, "gate_read": "logit"}),
    "bmojo-null-key-gqa": ("bmojo", 0, {"null_key": True, "n_kv_heads": 1}),
    "bmojo-recency-fifo": ("bmojo", 0, {"selector": "recency", "memory_rule": "fifo", "fifo_per_chunk": 2}),
    "bmojo-decay-mamba1": ("bmojo", 0, {"memory_decay": 0.7, "ssm_kind": "mamba1"}),
    "bmojo-untied-residual-noconv": ("bmojo", 0, {"tie_fading": False, "ssm_residual": True, "attn_conv": False}),
    "bmojo-C=W-M>T": ("bmojo", 0, {"chunk": W, "memory_size": 64}),
    "bmojo-gate": ("bmojo", 0, {"selection_gate": True}),
    "bmojo-gate-logit-none": ("bmojo", 0, {"selection_gate": True, "gate_read": "logit", "selector": "none"}),
    "bmojo-gate-logit-trainM": ("bmojo", 0, {"selection_gate": True, "gate_read": "logit", "train_memory_size": 64,
                                            "n_kv_heads": 1}),
    "bmojo-memory-rope-edge": ("bmojo", 0, {"memory_rope": "edge", "selection_gate": True, "gate_read": "logit",
                                           "chunk": 2}),
    "bmojo-gate-conv-edge": ("bmojo", 0, {"selection_gate": True, "gate_read": "logit", "gate_input": "conv",
                                         "memory_rope": "edge"}),
    "bmojo-fading-gate-untied": ("bmojo", 0, {"fading_gate": -1.5, "tie_fading": False, "selection_gate": True,
                                             "gate_read": "logit"}),
}
CASES = [pytest.param(m, T, id=f"{m}-{lid}") for m in MIXERS for lid, T in LENGTHS.items()]


def build(name, impl="fast", seed=0):
    p, idx, kw = MIXERS[name]
    torch.manual_seed(seed)
    return randomise_extras(make_mixer(tiny(p, **kw), idx, impl))


def x_of(T, B=2, seed=1):
    return torch.randn(B, T, 32, generator=seeded(seed))


@pytest.mark.parametrize("name,T", CASES)
def test_fast_matches_reference_with_gradients(name, T):
    fast, ref = build(name, "fast"), build(name, "ref")
    ref.load_state_dict(fast.state_dict())
    x = x_of(T)
    outs = {}
    for tag, m in (("fast", fast), ("ref", ref)):
        xi = x.clone().requires_grad_()
        y, _ = m(xi, return_state=False)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs[tag] = [y, xi.grad] + [p.grad for _, p in m.named_parameters()]
    names = ["y", "dx"] + [f"d{n}" for n, _ in fast.named_parameters()]
    assert_grads_close(outs["fast"], outs["ref"], names)


@pytest.mark.parametrize("name,T", CASES)
@torch.no_grad()
def test_forward_equals_prefix_then_steps(name, T):
    m = build(name).eval()
    x = x_of(T)
    y_full, _ = m(x)
    for t in sorted({0, T // 2, T - 1}):
        state = m(x[:, :t])[1] if t else m.init_state(2)
        ys = [m(x[:, :t])[0]] if t else []
        for j in range(t, T):
            y_j, state = m.step(x[:, j], state)
            ys.append(y_j[:, None])
        assert_close(torch.cat(ys, 1), y_full, rtol=1e-5, name=f"prefix {t} + steps")


@pytest.mark.parametrize("name,T", CASES)
@torch.no_grad()
def test_state_carries_across_forwards(name, T):
    m = build(name).eval()
    x = x_of(T)
    y_full, s_full = m(x)
    for t in sorted({1, T // 3, T // 2 + 1, T - 1} - {0, T}):
        y1, s1 = m(x[:, :t])
        y2, s2 = m(x[:, t:], s1)
        assert_close(torch.cat([y1, y2], 1), y_full, name=f"split at {t}")
        assert s2.nbytes() == s_full.nbytes()
        # the carried state continues exactly like the one-shot state
        z = x_of(3, seed=9)
        assert_close(m(z, s2)[0], m(z, s_full)[0], name=f"continuation after split {t}")


@pytest.mark.parametrize("name", list(MIXERS))
def test_causality(name):
    """Perturbing input t changes no output before t (the eidetic selection included)."""
    m = build(name).eval()
    T = 4 * W + 5
    x = x_of(T)
    y, _ = m(x, return_state=False)
    for t in (0, 3, W, 2 * W + 1, T - 1):
        x2 = x.clone()
        x2[:, t] += 5 * torch.randn(2, 32, generator=seeded(t))
        y2, _ = m(x2, return_state=False)
        assert torch.equal(y2[:, :t], y[:, :t]), f"{name}: output before {t} changed"
        assert not torch.equal(y2[:, t:], y[:, t:]), f"{name}: output at/after {t} did not change"


@pytest.mark.parametrize("name", ["swa", "bmojo", "mamba2", "full-attn"])
def test_bad_input_and_foreign_state(name):
    m = build(name)
    with pytest.raises(ValueError, match="D=32"):
        m(torch.randn(2, 5, 31))
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        m(torch.randn(5, 32))
    with pytest.raises(TypeError, match="floating point"):
        m(torch.ones(2, 5, 32, dtype=torch.long))
    other = build("mamba1" if name != "mamba1" else "swa")
    with pytest.raises(TypeError, match="expected a"):
        m.step(torch.randn(2, 32), other.init_state(2))
    with pytest.raises(ValueError, match="batch"):
        m.step(torch.randn(3, 32), m.init_state(2))


def test_full_attention_cache_overflow_fails_loudly():
    m = build("full-attn").eval()
    state = m.init_state(1, capacity=4)
    with torch.no_grad():
        for j in range(4):
            m.step(torch.randn(1, 32), state)
        with pytest.raises(ValueError, match="full"):
            m.step(torch.randn(1, 32), state)
        with pytest.raises(ValueError, match="capacity"):
            m(torch.randn(1, 300, 32))  # longer than max_seq_len=256 with a state to return
    assert isinstance(state, AttentionState)
