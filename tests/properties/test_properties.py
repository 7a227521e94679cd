"""Property tests (hypothesis) over random shapes, lengths, windows, chunk sizes and memory sizes: the fast paths
agree with their references, nothing is NaN, and every mixer is causal.  Examples are derandomised (the same in
every run) and bounded so the suite stays fast."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bmojo.layers.bmojo import BMojoMixer
from bmojo.ops.attention import window_attention, window_attention_ref
from bmojo.ops.conv import causal_conv1d, causal_conv1d_ref
from bmojo.ops.scan import selective_scan, selective_scan_ref
from bmojo.ops.eidetic import Entries, eidetic_memory
from bmojo.ops.ssd import ssd_chunked, ssd_ref
from bmojo.bmojo_minimal import prefix_topk_memory
from tests.helpers import assert_close, randomise_extras, seeded, tiny
from tests.ops.test_attention import _inputs, _opts, _segs

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)


@st.composite
def windows(draw):
    W = draw(st.integers(1, 12))
    C = draw(st.integers(1, W))
    return dict(T=draw(st.integers(1, 40)), W=W, C=C, q0=draw(st.integers(0, 30)), M=draw(st.integers(0, 6)),
                Hk=draw(st.sampled_from([1, 2])), G=draw(st.sampled_from([1, 2])), seed=draw(st.integers(0, 99)))


@SETTINGS
@given(windows())
def test_window_attention_fast_equals_reference(p):
    t, kw = _inputs(p["T"], p["W"], p["C"], p["q0"], p["M"], seeded(p["seed"]), H=p["Hk"] * p["G"], Hk=p["Hk"])
    segs = _segs(t, kw, memory=p["M"] > 0)
    with torch.no_grad():
        a = window_attention(t["q"], segs, p["W"], **_opts(kw))
        b = window_attention_ref(t["q"], segs, p["W"], **_opts(kw))
    assert torch.isfinite(a).all()
    assert_close(a, b, name=f"window attention {p}")


def _scans_agree(fast, ref):
    """(y, final state) of a fast scan and of its reference: finite and equal."""
    assert torch.isfinite(fast[0]).all()
    assert_close(fast[0], ref[0], rtol=1e-4, name="y")
    assert_close(fast[1], ref[1], rtol=1e-4, name="final state")


@SETTINGS
@given(T=st.integers(1, 50), chunk=st.integers(1, 20), E=st.integers(1, 6), N=st.integers(1, 5),
       seed=st.integers(0, 99), init=st.booleans())
def test_mamba1_scan_fast_equals_reference(T, chunk, E, N, seed, init):
    g = seeded(seed)
    x, dt = torch.randn(2, T, E, generator=g), torch.rand(2, T, E, generator=g) + 0.05
    A, B, C = -torch.rand(E, N, generator=g) - 0.2, torch.randn(2, T, N, generator=g), torch.randn(2, T, N, generator=g)
    D, h0 = torch.randn(E, generator=g), (torch.randn(2, E, N, generator=g) if init else None)
    _scans_agree(selective_scan(x, dt, A, B, C, D, h0, True, chunk=chunk),
                 selective_scan_ref(x, dt, A, B, C, D, h0, True))


@SETTINGS
@given(T=st.integers(1, 50), chunk=st.integers(1, 20), H=st.sampled_from([1, 2, 4]), P=st.integers(1, 4),
       N=st.integers(1, 4), seed=st.integers(0, 99))
def test_ssd_chunked_equals_reference(T, chunk, H, P, N, seed):
    g = seeded(seed)
    x, dt = torch.randn(2, T, H, P, generator=g), torch.rand(2, T, H, generator=g) + 0.05
    A = -torch.rand(H, generator=g) - 0.3
    B, C = torch.randn(2, T, 1, N, generator=g), torch.randn(2, T, 1, N, generator=g)
    D, h0 = torch.randn(H, generator=g), torch.randn(2, H, P, N, generator=g)
    _scans_agree(ssd_chunked(x, dt, A, B, C, D, h0, True, chunk=chunk), ssd_ref(x, dt, A, B, C, D, h0, True))


@SETTINGS
@given(T=st.integers(1, 30), K=st.integers(1, 5), D=st.integers(1, 6), seed=st.integers(0, 99))
def test_causal_conv_fast_equals_reference(T, K, D, seed):
    g = seeded(seed)
    x, w, b = torch.randn(2, T, D, generator=g), torch.randn(D, K, generator=g), torch.randn(D, generator=g)
    s0 = torch.randn(2, D, K - 1, generator=g)
    y, s = causal_conv1d(x, w, b, s0, True)
    yr, sr = causal_conv1d_ref(x, w, b, s0, True)
    assert_close(y, yr, name="y")
    assert_close(s, sr, name="state")


@SETTINGS
@given(T=st.integers(1, 40), chunk=st.integers(1, 8), M=st.integers(1, 10),
       seed=st.integers(0, 99))
def test_chunk_loop_memory_equals_prefix_topk(T, chunk, M, seed):
    """With decay 1, the memory each block sees is the top-M of every earlier chunk (docs/model.md)."""
    scores = torch.rand(2, T, generator=seeded(seed))
    blocks = eidetic_memory(scores, start=0, chunk=chunk, memory=Entries.empty(2, M, "cpu"),
                            pending=Entries.empty(2, 0, "cpu"), src_offset=0).blocks
    oracle = prefix_topk_memory(scores, chunk, M)  # (B, T, T): key j in the memory of query i
    for i in range(T):
        pos = blocks.pos[:, i // chunk]
        for b in range(2):
            got = {int(p) for p in pos[b] if p >= 0}
            assert got == set(torch.nonzero(oracle[b, i]).flatten().tolist())


@st.composite
def mixers(draw):
    """The region where the layer's memories matter: T > W (fading keys and the eidetic memory are visible),
    M > 0, and a split (or perturbed position) t inside the sequence."""
    W = draw(st.integers(2, 10))
    T = draw(st.integers(W + 1, 4 * W + 4))
    return dict(window=W, chunk=draw(st.integers(1, W)), memory_size=draw(st.integers(1, 6)),
                selector=draw(st.sampled_from(["innovation", "norm", "random", "recency"])),
                fading=draw(st.booleans()), T=T, split=draw(st.integers(1, T - 1)), seed=draw(st.integers(0, 99)))


def _mixer(p):
    cfg = tiny("bmojo", window=p["window"], chunk=p["chunk"], memory_size=p["memory_size"], selector=p["selector"],
               fading=p["fading"])
    torch.manual_seed(p["seed"])
    return randomise_extras(BMojoMixer(cfg, 0)).eval()


@SETTINGS
@given(mixers())
def test_bmojo_parallel_equals_prefill_then_steps(p):
    m = _mixer(p)
    T, s = p["T"], min(p["split"], p["T"])
    x = torch.randn(2, T, 32, generator=seeded(p["seed"]))
    with torch.no_grad():
        full, _ = m(x)
        ys, st_ = [], None
        if s:
            y0, st_ = m(x[:, :s], None)
            ys.append(y0)
        else:
            st_ = m.init_state(2)
        for t in range(s, T):
            y, st_ = m.step(x[:, t], st_)
            ys.append(y[:, None])
    out = torch.cat(ys, 1)
    assert torch.isfinite(out).all()
    assert_close(out, full, rtol=1e-4, name=f"recurrent vs parallel {p}")


@SETTINGS
@given(mixers())
def test_bmojo_is_causal(p):
    m = _mixer(p)
    T = p["T"]
    t = min(p["split"], T - 1)
    x = torch.randn(1, T, 32, generator=seeded(p["seed"]))
    x2 = x.clone()
    x2[:, t] += 1.0
    with torch.no_grad():
        a, b = m(x)[0], m(x2)[0]
    assert torch.equal(a[:, :t], b[:, :t])  # nothing before t moves
    assert not torch.equal(a[:, t:], b[:, t:])  # the perturbation reaches t and later (the test can see a leak)
    if t + 1 < T:
        assert not torch.equal(a[:, t + 1:], b[:, t + 1:])
