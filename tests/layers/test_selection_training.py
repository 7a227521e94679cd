"""Selection that learns: the gate read as an attention logit, a training pool larger than the memory, and the
learned offset on the fading segment."""
import pytest
import torch

from bmojo.config import ConfigError
from bmojo.layers.bmojo import BMojoMixer
from tests.helpers import W, assert_close, randomise_extras, seeded, tiny

T = 4 * W + 5


def _gate_grad(mixer, x):
    """d(loss)/d(gate logit) per token (B, T) after one training-style backward."""
    held = {}

    def keep(_, __, out):
        out.retain_grad()
        held["g"] = out
    h = mixer.selection.gate.register_forward_hook(keep)
    y, _ = mixer(x, return_state=False)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    h.remove()
    return held["g"].grad[..., 0]


@pytest.mark.parametrize("train_M", [None, T])
def test_training_pool_gives_every_readable_candidate_a_gradient(train_M):
    """With the gate at its init (every priority tied, so the memory of M=2 keeps positions 0 and 1 forever), only
    those two tokens' gate logits get a gradient from a memory of M; with train_memory_size >= T every token a
    later query can read from memory (positions <= T-1-W) gets one, and no later token does."""
    m = BMojoMixer(tiny("bmojo", memory_size=2, fading=False, selection_gate=True, gate_read="logit",
                        selector="none", train_memory_size=train_M), 0).train()
    g = _gate_grad(m, torch.randn(2, T, 32, generator=seeded(0)))
    has = (g.abs() > 0).any(0)
    readable = torch.arange(T) <= T - 1 - W
    expected = readable if train_M else (torch.arange(T) < 2)
    assert torch.equal(has, expected), has.nonzero().flatten().tolist()


def test_training_pool_is_for_training_only():
    """Evaluation, decoding and any call with a state use memory_size: the eval output equals that of the same
    weights without train_memory_size, and a training forward differs from it."""
    kw = dict(memory_size=2, selection_gate=True, gate_read="logit", selector="none")
    torch.manual_seed(0)
    a = BMojoMixer(tiny("bmojo", train_memory_size=T, **kw), 0)
    b = BMojoMixer(tiny("bmojo", **kw), 0)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, T, 32, generator=seeded(1))
    with torch.no_grad():
        a.eval(), b.eval()
        assert torch.equal(a(x, return_state=False)[0], b(x, return_state=False)[0])
        assert torch.equal(a(x)[0], b(x)[0])
        a.train(), b.train()
        assert torch.equal(a(x)[0], b(x)[0]), "a call that returns a state keeps memory_size"
        assert not torch.allclose(a(x, return_state=False)[0], b(x, return_state=False)[0])


def test_logit_gate_at_init_leaves_values_unscaled():
    """gate_read='logit' at init: every memory entry's logit moves by log sigmoid(0) alike, values are unscaled
    (the 'value' gate halves them), and the decode state carries the entries' gate logits."""
    torch.manual_seed(0)
    m = BMojoMixer(tiny("bmojo", selection_gate=True, gate_read="logit"), 0).eval()
    x = torch.randn(1, T, 32, generator=seeded(2))
    st = m(x)[1]
    ref = m.init_state(1)
    for t in range(T):
        m.step(x[:, t], ref)
    assert_close(st.mem.v, ref.mem.v, name="memory values")
    assert torch.equal(st.mem.gate, torch.zeros_like(st.mem.gate))
    assert_close(st.mem.v, m.v_proj(m._attn_input(x, None, False)[0]).view(1, T, m.n_kv_heads, -1)[
        torch.zeros(6, dtype=torch.long), st.mem.pos[0]][None], name="unscaled values")


def test_fading_gate_is_learned_and_switches_the_segment():
    """fading_gate=-30 switches the fading keys off (the layer equals the same layer without fading keys); the
    offset is a parameter that gets a gradient at a moderate value."""
    torch.manual_seed(0)
    off = BMojoMixer(tiny("bmojo", fading_gate=-30.0, memory_size=0, ssm_residual=False), 0, memory=False)
    ref = BMojoMixer(tiny("bmojo", fading=False, memory_size=0, ssm_residual=False), 0, memory=False)
    ref.load_state_dict({k: v for k, v in off.state_dict().items() if k in ref.state_dict()})
    x = torch.randn(2, T, 32, generator=seeded(3))
    assert_close(off(x)[0], ref(x)[0], rtol=1e-5, name="fading switched off")
    m = BMojoMixer(tiny("bmojo", fading_gate=-1.0), 0)
    y, _ = m(x, return_state=False)
    y.pow(2).sum().backward()
    assert m.fading_bias.grad is not None and m.fading_bias.grad.abs() > 0


@pytest.mark.parametrize("kw,field", [(dict(train_memory_size=3), "train_memory_size"),
                                      (dict(train_memory_size=64, train_store_topk=2), "train_memory_size"),
                                      (dict(train_memory_size=64, memory_rule="fifo", fifo_per_chunk=2),
                                       "train_memory_size"),
                                      (dict(gate_read="soft"), "gate_read"),
                                      (dict(gate_input="h"), "gate_input"),
                                      (dict(gate_input="conv", attn_conv=False), "gate_input"),
                                      (dict(fading_gate=float("nan")), "fading_gate")])
def test_bad_selection_config_names_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        tiny("bmojo", **kw)


def test_gate_penalty_is_an_auxiliary_loss_of_training_only():
    """gate_penalty * mean(sigmoid(g)) joins the aux loss in training (its gradient pushes every gate down) and is
    absent in evaluation; without a penalty the logit gate adds no aux loss."""
    torch.manual_seed(0)
    m = BMojoMixer(tiny("bmojo", selection_gate=True, gate_read="logit", selector="none", gate_penalty=0.5), 0)
    x = torch.randn(2, T, 32, generator=seeded(4))
    out = m(x, return_state=False)
    assert_close(out.aux_loss, 0.5 * torch.sigmoid(m.selection.gate(x)[..., 0]).mean(), name="penalty")
    out.aux_loss.backward()
    w = m.selection.gate.weight.grad
    assert w is not None and w.abs().sum() > 0
    assert m.eval()(x, return_state=False).aux_loss is None
    m0 = BMojoMixer(tiny("bmojo", selection_gate=True, gate_read="logit", selector="none"), 0)
    assert m0(x, return_state=False).aux_loss is None


def test_training_pool_shrinks_with_progress():
    """train_memory_anneal: the pool is train_memory_size at progress 0, memory_size from progress = anneal on,
    linear between; the training loop sets the progress before every step."""
    from bmojo import BMojoLM
    from bmojo.data.synthetic import batch_stream, make_task
    from bmojo.train import TrainConfig, train

    cfg = tiny("bmojo", memory_size=4, train_memory_size=36, train_memory_anneal=0.5, selection_gate=True,
               gate_read="logit", n_layers=1)
    model = BMojoLM(cfg)
    mixer = model.layers[0].mixer
    got = []
    for p in (0.0, 0.125, 0.25, 0.5, 0.9):
        model.set_progress(p)
        got.append(mixer.selection.capacity(None, False))
    assert got == [36, 28, 20, 4, 4]
    assert mixer.selection.capacity(None, True) == 4 and mixer.eval().selection.capacity(None, False) == 4
    mixer.train()
    _, gen = make_task("mqar", vocab_size=61, seq_len=24, num_kv_pairs=3)
    seen = []
    orig = mixer.selection.capacity
    mixer.selection.capacity = lambda *a: (seen.append(orig(*a)), seen[-1])[1]
    train(model, TrainConfig(steps=4, batch_size=2, lr=1e-3, warmup=0, progress=False), batch_stream(gen, 2, 0))
    assert seen == [36, 20, 4, 4]


def test_memory_rope_edge_composes_rotations():
    """memory_rope='edge': an entry rotated at its own position p, rotated again by edge - p, equals the same key
    rotated at `edge` directly; so every entry a block reads sits W..W+C-1 before its queries."""
    from bmojo.ops.rope import apply_rope, rope_cos_sin

    m = BMojoMixer(tiny("bmojo", memory_rope="edge", rope_fraction=0.75), 0)
    k = torch.randn(2, 5, 2, 8, generator=seeded(5))  # (B, M, Hk, Dh)
    pos = torch.tensor([[0, 3, 7, 19, 40], [2, 2, 11, 30, 31]])
    rot = lambda x, p: apply_rope(x[:, None], *rope_cos_sin(p, 8, m.rope_theta, x.dtype, 0.75))[:, 0]
    own = torch.stack([torch.stack([rot(k[b, j][None], pos[b, j:j + 1])[0] for j in range(5)]) for b in range(2)])
    edge = 25
    direct = torch.stack([rot(k[b], torch.full((5,), edge)) for b in range(2)])
    assert_close(m._at_edge(own, pos, edge), direct, name="rotations compose")


def test_memory_rope_edge_reads_each_block_at_its_window_edge():
    """The rule itself, in both modes: the queries of block b (positions a0 + bC .. a0 + bC + C - 1) read their
    entries as if at a0 + bC - W, and a decoded query at i as if at i - i % C - W.  (Moving the edge by one in both
    modes keeps them equal, so only this test sees it.)"""
    m = BMojoMixer(tiny("bmojo", memory_rope="edge"), 0).eval()
    W, C = m.window, m.chunk
    seen = []
    real = m._at_edge
    m._at_edge = lambda k, pos, edge: seen.append(torch.as_tensor(edge).flatten().tolist()) or real(k, pos, edge)
    x = torch.randn(1, 21, 32, generator=seeded(8))
    with torch.no_grad():
        _, state = m(x[:, :6], m.init_state(1))
        first = seen.pop()
        assert first == [0 - W + C * b for b in range(len(first))]
        m(x[:, 6:17], state)  # from position 6 on, in a second call: its first block starts at a0 = 4
        second = seen.pop()
        assert second == [4 - W + C * b for b in range(len(second))]
        _, state = m(x[:, :17], m.init_state(1))
        for i in range(17, 21):
            m.step(x[:, i], state)
            assert seen.pop() == [i - i % C - W]


@pytest.mark.parametrize("gate_input,sees_context", [("x", False), ("conv", True)])
def test_the_gate_reads_its_token_alone_or_in_its_local_context(gate_input, sees_context):
    """gate_input=conv: a token's gate moves when the token before it changes (attn_conv's window); x: it does not."""
    m = randomise_extras(BMojoMixer(tiny("bmojo", selection_gate=True, gate_read="logit", selector="none",
                                         gate_input=gate_input), 0)).eval()
    gates = []
    m.selection.gate.register_forward_hook(lambda mod, inp, out: gates.append(out[..., 0]))
    x = torch.randn(1, 12, m.d_model, generator=seeded(3))
    x2 = x.clone()
    x2[:, 6] += 1.0
    with torch.no_grad():
        m(x, return_state=False)
        m(x2, return_state=False)
    before, after = gates
    assert torch.equal(before[:, :6], after[:, :6])  # causal either way
    assert (before[:, 7] - after[:, 7]).abs().item() > 1e-4 if sees_context else torch.equal(before[:, 7:], after[:, 7:])


def test_checkpoints_that_name_the_scorer_and_gate_on_the_mixer_still_load():
    """Before the selection module, a mixer's state dict held `scorer.predictor.weight` (earlier still
    `predictor.weight`) and `gate.weight`; such a state dict loads into the same weights."""
    torch.manual_seed(0)
    new = randomise_extras(BMojoMixer(tiny("bmojo", selection_gate=True), 0))
    sd = new.state_dict()
    for old_key in ("predictor.weight", "scorer.predictor.weight"):
        old = {k.replace("selection.scorer.predictor.weight", old_key).replace("selection.gate.", "gate."): v
               for k, v in sd.items()}
        assert "selection.gate.weight" not in old and old_key in old
        fresh = BMojoMixer(tiny("bmojo", selection_gate=True), 0)
        fresh.load_state_dict(old)  # strict: every key found
        for k, v in fresh.state_dict().items():
            assert torch.equal(v, sd[k]), k
