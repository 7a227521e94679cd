"""Chunked windowed attention over [eidetic | fading | raw] equals the per-query reference (forward and all
gradients), with history from a state (q_start > 0), grouped-query heads, and memory blocks."""
import pytest
import torch

from bmojo.bmojo_minimal import dense_attention
from bmojo.ops.attention import (BlockEntries, QueryEntries, Segments, Stream, causal_attention, num_blocks,
                                 window_attention, window_attention_ref, window_attention_shares)
from tests.helpers import assert_close, seeded

CASES = [  # T, W, C, q_start, M
    pytest.param(7, 8, 8, 0, 0, id="T7-W8-C8"),
    pytest.param(8, 8, 8, 0, 3, id="T8-W8-C8-M3"),
    pytest.param(9, 8, 4, 0, 3, id="T9-W8-C4-M3"),
    pytest.param(37, 8, 4, 0, 5, id="T37-W8-C4-M5"),
    pytest.param(37, 8, 8, 13, 5, id="T37-W8-C8-q13-M5"),
    pytest.param(20, 5, 3, 7, 4, id="T20-W5-C3-q7-M4"),
    pytest.param(1, 4, 2, 9, 2, id="T1-W4-C2-q9-M2"),
]


def _inputs(T, W, C, q0, M, g, H=4, Hk=2, Dh=8, B=2):
    k0, f0 = max(0, q0 - W), max(0, q0 - 2 * W)
    nb = num_blocks(q0, T, C)
    t = dict(q=torch.randn(B, T, H, Dh, generator=g), k=torch.randn(B, q0 - k0 + T, Hk, Dh, generator=g),
             v=torch.randn(B, q0 - k0 + T, Hk, Dh, generator=g), fk=torch.randn(B, q0 - f0 + T, Hk, Dh, generator=g),
             fv=torch.randn(B, q0 - f0 + T, Hk, Dh, generator=g), mem_k=torch.randn(B, nb, M, Hk, Dh, generator=g),
             mem_v=torch.randn(B, nb, M, Hk, Dh, generator=g))
    for x in t.values():
        x.requires_grad_()
    pos = torch.randint(-1, q0 + T, (B, nb, M), generator=g)
    return t, dict(chunk=C, q_start=q0, k_start=k0, f_start=f0, mem_pos=pos)


def _segs(t, kw, *, fading=True, memory=True, store=None, mem_bias=None, fading_bias=None):
    """The Segments of `_inputs`' tensors t (raw always; fading, memory and store entries as asked)."""
    return Segments(Stream(t["k"], t["v"], kw["k_start"]),
                    Stream(t["fk"], t["fv"], kw["f_start"], fading_bias) if fading else None,
                    BlockEntries(t["mem_k"], t["mem_v"], kw["mem_pos"], mem_bias) if memory else None,
                    QueryEntries(*store) if store is not None else None)


def _opts(kw):
    return dict(chunk=kw["chunk"], q_start=kw["q_start"])


def _raw(k, v):
    return Segments(Stream(k, v))


@pytest.mark.parametrize("T,W,C,q0,M", CASES)
def test_chunked_matches_reference(T, W, C, q0, M):
    t, kw = _inputs(T, W, C, q0, M, seeded(T + W))
    outs = {}
    for name, fn in (("ref", window_attention_ref), ("fast", window_attention)):
        for x in t.values():
            x.grad = None
        y = fn(t["q"], _segs(t, kw), W, **_opts(kw))
        y.pow(2).sum().backward()
        outs[name] = [y] + [x.grad if x.grad is not None else torch.zeros_like(x) for x in t.values()]
    for a, b, n in zip(outs["fast"], outs["ref"], ["y"] + [f"d{k}" for k in t]):
        assert_close(a, b, name=n)


@pytest.mark.parametrize("T,W", [(7, 8), (8, 8), (9, 8), (13, 4), (37, 8)])
def test_window_only_matches_dense_band(T, W):
    """Sliding window alone: query i sees keys (i-W, i] -- fixed once and tested at W-1, W, W+1."""
    g = seeded(T)
    q, k, v = torch.randn(2, T, 4, 8, generator=g), torch.randn(2, T, 2, 8, generator=g), torch.randn(2, T, 2, 8, generator=g)
    assert_close(window_attention(q, _raw(k, v), W, chunk=min(4, W)), dense_attention(q, k, v, W), name="swa")


def test_window_at_least_T_is_full_causal():
    g = seeded(5)
    T = 19
    q, k, v = torch.randn(2, T, 4, 8, generator=g), torch.randn(2, T, 2, 8, generator=g), torch.randn(2, T, 2, 8, generator=g)
    full = causal_attention(q, k, v)
    for W in (T, T + 1, 3 * T):
        assert_close(window_attention(q, _raw(k, v), W, chunk=4), full, name=f"W={W}")


def test_window_sees_exactly_W_keys():
    """With values one-hot in position, each query's weights land on exactly min(i+1, W) keys."""
    T, W = 12, 5
    q = torch.zeros(1, T, 1, 2)
    k = torch.zeros(1, T, 1, 2)
    v = torch.eye(T)[None, :, None, :].expand(1, T, 1, T)  # value j = e_j
    w = window_attention(q, _raw(k, v), W, chunk=3)[0, :, 0]  # (T, T) attention weights (uniform scores)
    for i in range(T):
        seen = (w[i] > 0).nonzero().flatten().tolist()
        assert seen == list(range(max(0, i - W + 1), i + 1)), f"query {i} saw {seen}"


@pytest.mark.parametrize("fn", [window_attention, window_attention_shares], ids=["fast", "shares"])
@pytest.mark.parametrize("T,W,C,q0,M", CASES)
def test_store_entries_match_reference_with_gradients(T, W, C, q0, M, fn):
    """`extra` (per-query, per-head entries from the long-term store) in the fast path and the explicit-softmax
    path: output and the gradients of q, k, v, the fading and memory tensors and the store's keys and values
    equal the sequential reference."""
    g = seeded(T + W + 1)
    t, kw = _inputs(T, W, C, q0, M, g)
    K, (B, _, H, Dh) = 3, t["q"].shape
    t["ek"], t["ev"] = (torch.randn(B, T, H, K, Dh, generator=g).requires_grad_() for _ in range(2))
    evis = torch.rand(B, T, H, K, generator=g) < 0.6
    outs = {}
    for name, f in (("ref", window_attention_ref), ("fast", fn)):
        for x in t.values():
            x.grad = None
        y = f(t["q"], _segs(t, kw, store=(t["ek"], t["ev"], evis)), W, **_opts(kw))
        y = y[0] if isinstance(y, tuple) else y
        y.pow(2).sum().backward()
        outs[name] = [y] + [x.grad if x.grad is not None else torch.zeros_like(x) for x in t.values()]
    assert outs["ref"][-1].abs().max() > 0, "no store value was read"
    for a, b, n in zip(outs["fast"], outs["ref"], ["y"] + [f"d{k}" for k in t]):
        assert_close(a, b, name=n)


@pytest.mark.parametrize("T,W,C,q0,M", [c for c in CASES  # memory and fading keys visible to some query
                                        if c.values[-1] > 0 and c.values[0] + c.values[3] >= 2 * c.values[1]])
@pytest.mark.parametrize("extra", [False, True], ids=["", "store"])
def test_logit_biases_match_reference_with_gradients(T, W, C, q0, M, extra):
    """mem_bias (the selection gate's log-sigmoid per memory entry) and fading_bias (one offset on the fading
    segment): chunked = per-query reference for the output and the gradients of both biases and every input, and
    the explicit-softmax `window_attention_shares` agrees."""
    g = seeded(3 * T + W)
    t, kw = _inputs(T, W, C, q0, M, g)
    t["mem_bias"] = torch.randn(*kw["mem_pos"].shape, generator=g).requires_grad_()
    t["fading_bias"] = torch.tensor(-0.7, requires_grad=True)
    t = {k: x.detach().double().requires_grad_() for k, x in t.items()}  # float64: one scalar sums many terms
    store = None
    if extra:
        K = 2
        store = (torch.randn(2, T, 4, K, 8, generator=g).double(),
                 torch.randn(2, T, 4, K, 8, generator=g).double(), torch.rand(2, T, 4, K, generator=g) > 0.3)
    outs = {}
    for name, fn in (("ref", window_attention_ref), ("fast", window_attention),
                     ("shares", lambda *a, **k: window_attention_shares(*a, **k)[0])):
        for x in t.values():
            x.grad = None
        y = fn(t["q"], _segs(t, kw, store=store, mem_bias=t["mem_bias"], fading_bias=t["fading_bias"]), W,
               **_opts(kw))
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs[name] = [y] + [x.grad if x.grad is not None else torch.zeros_like(x) for x in t.values()]
    assert outs["ref"][-1].abs() > 0 and outs["ref"][-2].abs().sum() > 0, "both biases get a gradient"
    for other in ("fast", "shares"):
        for a, b, n in zip(outs[other], outs["ref"], ["y"] + [f"d{k}" for k in t]):
            assert_close(a, b, name=f"{other} {n}")
    # and the biases matter: without them the output differs
    y0 = window_attention_ref(t["q"], _segs(t, kw, store=store), W, **_opts(kw))
    assert not torch.allclose(y0, outs["ref"][0])


def _ring(stream, start, end, span, g):
    """A decode ring of `span` slots written up to position end-1 from a stream that starts at `start`; slots never
    written hold noise (the op must hide them)."""
    ring = torch.randn(stream.shape[0], span, *stream.shape[2:], generator=g, dtype=stream.dtype)
    for p in range(max(0, end - span), end):
        ring[:, p % span] = stream[:, p - start]
    return ring


@pytest.mark.parametrize("T,W,C,q0,M", CASES)
def test_decode_step_matches_reference(T, W, C, q0, M):
    """window_attention_step, the decode op (one query, the raw and fading segments as ring buffers, the block's
    memory, the query's store entries, both logit biases) equals the reference's output for every query."""
    from bmojo.ops.attention import Ring, window_attention_step
    g = seeded(5 * T + W)
    t, kw = _inputs(T, W, C, q0, M, g)
    t = {k: x.detach() for k, x in t.items()}
    K, (B, _, H, Dh) = 2, t["q"].shape
    store = (torch.randn(B, T, H, K, Dh, generator=g), torch.randn(B, T, H, K, Dh, generator=g),
             torch.rand(B, T, H, K, generator=g) < 0.6)
    mem_bias, fading_bias = torch.randn(*kw["mem_pos"].shape, generator=g), torch.tensor(-0.4)
    full = _segs(t, kw, store=store, mem_bias=mem_bias, fading_bias=fading_bias)
    ref = window_attention_ref(t["q"], full, W, **_opts(kw))
    for j in range(T):
        i, b = q0 + j, (q0 + j) // C - q0 // C
        segs = Segments(Ring(_ring(t["k"], kw["k_start"], i + 1, W, g), _ring(t["v"], kw["k_start"], i + 1, W, g)),
                        Ring(_ring(t["fk"], kw["f_start"], i + 1, 2 * W, g),
                             _ring(t["fv"], kw["f_start"], i + 1, 2 * W, g), fading_bias),
                        BlockEntries(t["mem_k"][:, b:b + 1], t["mem_v"][:, b:b + 1], kw["mem_pos"][:, b:b + 1],
                                     mem_bias[:, b:b + 1]),
                        QueryEntries(*(x[:, j:j + 1] for x in store)))
        got = window_attention_step(t["q"][:, j:j + 1], segs, W, chunk=C, q_start=i)
        assert_close(got, ref[:, j:j + 1], name=f"query {i}")


def test_every_attention_op_has_one_signature():
    """The reference, the chunked path, the shares path, the fused dispatch and the decode op take the same arguments,
    so a backend swaps one for another and a reader learns one signature."""
    import inspect

    from bmojo.ops.attention import window_attention_fused, window_attention_step
    sigs = {fn.__name__: str(inspect.signature(fn)) for fn in (window_attention_ref, window_attention,
                                                               window_attention_shares, window_attention_fused,
                                                               window_attention_step)}
    assert len(set(sigs.values())) == 1, sigs
