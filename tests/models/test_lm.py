"""Every preset: fast = reference (logits and all gradients), full forward = prefill + decode, greedy
generation with the decode state = recomputing the full forward, causality, bounded state size."""
import pytest
import torch

from bmojo import PRESETS, BMojoLM, generate
from tests.helpers import LENGTHS, assert_close, assert_grads_close, randomise_extras, seeded, tiny

PRESET_LEN = [pytest.param(p, T, id=f"{p}-{k}") for p in PRESETS for k, T in LENGTHS.items()]
V = 61


def model(name, impl="fast", seed=0, **kw):
    torch.manual_seed(seed)
    return randomise_extras(BMojoLM(tiny(name, impl=impl, **kw)))


def ids_of(T, B=2, seed=1):
    return torch.randint(0, V, (B, T), generator=seeded(seed))


FUSED_LEN = [pytest.param(p, T, kind, id=f"fused-{p}-{kind}-{k}") for p, kind in
             (("mamba", "mamba1"), ("bmojo", "mamba1"), ("bmojo", "mamba2"), ("hybrid", "mamba2"))
             for k, T in LENGTHS.items()]


@pytest.mark.parametrize("name,T", PRESET_LEN)
def test_fast_matches_reference_logits_and_gradients(name, T, impl="fast", **kw):
    fast, ref = model(name, impl, **kw), model(name, "ref", **kw)
    ref.load_state_dict(fast.state_dict())
    ids = ids_of(T)
    res = {}
    for tag, m in (("fast", fast), ("ref", ref)):
        m.zero_grad()
        out = m(ids)
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), ids.roll(-1, 1).flatten())
        (loss + (out.aux_loss if out.aux_loss is not None else 0)).backward()
        res[tag] = [out.logits] + [p.grad for p in m.parameters()]
    names = ["logits"] + [n for n, _ in fast.named_parameters()]
    assert_grads_close(res["fast"], res["ref"], names)


@pytest.mark.parametrize("name,T,kind", FUSED_LEN)
def test_fused_matches_reference_logits_and_gradients(name, T, kind):
    """impl=fused (the C++ scan, for mamba1 and mamba2 layers), alone, in a hybrid and inside B'MOJO."""
    test_fast_matches_reference_logits_and_gradients(name, T, impl="fused", ssm_kind=kind)


@pytest.mark.parametrize("name,T", PRESET_LEN)
@torch.no_grad()
def test_full_forward_equals_prefill_then_decode(name, T):
    m = model(name).eval()
    ids = ids_of(T)
    full = m(ids).logits
    t = max(1, T // 3)
    out = m(ids[:, :t], return_state=True)
    logits, state = [out.logits], out.state
    for j in range(t, T):
        lj, state = m.step(ids[:, j], state)
        logits.append(lj[:, None])
    assert state.pos == T
    assert_close(torch.cat(logits, 1), full, rtol=1e-4, name="prefill + decode")
    # decoding from an empty state, token by token from the start
    state = m.init_state(2)
    steps = torch.stack([m.step(ids[:, j], state)[0] for j in range(T)], 1)
    assert_close(steps, full, rtol=1e-4, name="decode from empty state")


@pytest.mark.parametrize("impl", ["ref", "fast", "fused"])
@pytest.mark.parametrize("name", list(PRESETS))
def test_empty_input_gives_empty_output_and_leaves_the_state(name, impl):
    m = model(name, impl=impl)
    empty = torch.zeros(2, 0, dtype=torch.long)
    out = m(empty)
    assert out.logits.shape == (2, 0, V)
    with torch.no_grad():
        state = m(ids_of(5), return_state=True).state
        after = m(empty, state, return_state=True).state
        assert after.pos == 5
        ids = ids_of(3, seed=4)
        assert_close(m(ids, after).logits, m(ids, m(ids_of(5), return_state=True).state).logits, name="after empty")


@pytest.mark.parametrize("name", list(PRESETS))
@torch.no_grad()
def test_greedy_generate_equals_recomputing(name):
    m = model(name).eval()
    prompt = ids_of(11)
    out = generate(m, prompt, 30, temperature=0.0)
    seq = prompt
    for _ in range(30):
        nxt = m(seq).logits[:, -1].argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], 1)
    assert torch.equal(out, seq), f"{name}: cached generation diverged from recomputation"


@pytest.mark.parametrize("name", list(PRESETS))
@torch.no_grad()
def test_causality(name):
    m = model(name).eval()
    T = LENGTHS["gt4W"]
    ids = ids_of(T)
    base = m(ids).logits
    for t in (0, 5, 17, T - 1):
        ids2 = ids.clone()
        ids2[:, t] = (ids2[:, t] + 7) % V
        out = m(ids2).logits
        assert torch.equal(out[:, :t], base[:, :t]), f"{name}: logits before {t} changed"
        assert not torch.equal(out[:, t:], base[:, t:])


@pytest.mark.parametrize("name", ["swa", "mamba", "hybrid", "bmojo-f", "bmojo"])
@torch.no_grad()
def test_state_bytes_bounded_after_1k_and_8k_tokens(name):
    m = model(name, n_layers=1, d_model=16, n_heads=2, n_kv_heads=2, max_seq_len=9000).eval()
    sizes = {}
    for T in (1000, 8000):
        out = m(ids_of(T, B=1), return_state=True)
        state = out.state
        nxt = out.logits[:, -1].argmax(-1)
        for _ in range(8):  # and keep generating
            lg, state = m.step(nxt, state)
            nxt = lg.argmax(-1)
        sizes[T] = state.nbytes()
    assert sizes[1000] == sizes[8000] == m.state_bytes(1000) == m.state_bytes(8000), sizes


@torch.no_grad()
def test_generated_state_bytes_constant_over_1k_tokens():
    m = model("bmojo", n_layers=1, d_model=16, n_heads=2, n_kv_heads=2).eval()
    seen = []
    state = m.init_state(1)
    tok = ids_of(1, B=1)[:, 0]
    for j in range(1000):
        lg, state = m.step(tok, state)
        tok = lg.argmax(-1)
        if j in (10, 999):
            seen.append(state.nbytes())
    assert seen[0] == seen[1] == m.state_bytes(1)


def test_transformer_state_grows_with_T():
    m = model("transformer")
    assert m.state_bytes(2000) > m.state_bytes(1000) > 0
    kv = 2 * 2 * 2 * 8 * 4  # k and v, layers, kv heads, head dim, fp32 bytes per token
    assert m.state_bytes(2000) - m.state_bytes(1000) == 1000 * kv


def test_aux_loss_reported_separately():
    m = model("bmojo").train()
    out = m(ids_of(40))
    assert out.aux_loss is not None and out.aux_loss.dim() == 0
    assert model("transformer").train()(ids_of(40)).aux_loss is None


def test_logits_at_labelled_positions_only():
    m = model("bmojo").eval()
    ids = ids_of(20)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[:, 15:] = True
    assert_close(m(ids, logits_at=mask).logits, m(ids).logits[mask], name="masked head")
