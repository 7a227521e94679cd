"""The flex_attention form of windowed attention (the CUDA path of impl=fused) equals the per-query reference.
On the CPU it runs eagerly and forward only; on CUDA the compiled kernel is checked forward and backward."""
import pytest
import torch

from bmojo.ops import flex
from bmojo.ops.attention import Segments, Stream, window_attention, window_attention_fused, window_attention_ref
from tests.helpers import assert_close, seeded
from tests.ops.test_attention import _inputs, _segs

pytestmark = [pytest.mark.skipif(not flex.available(), reason="this torch has no flex_attention"),
              pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")]
CASES = [  # T, W, C, M, parts: which key sets take part
    pytest.param(9, 4, 4, 0, "raw", id="raw-T9-W4"),
    pytest.param(37, 8, 4, 5, "all", id="all-T37-W8-C4-M5"),
    pytest.param(40, 8, 8, 3, "all", id="all-T40-W8-C8-M3"),
    pytest.param(21, 5, 3, 4, "mem", id="mem-T21-W5-C3-M4"),
    pytest.param(30, 6, 6, 0, "fading", id="fading-T30-W6"),
]


def _parts(t, kw, parts):
    return _segs(t, kw, fading=parts in ("all", "fading"), memory=parts in ("all", "mem"))


@pytest.mark.parametrize("T,W,C,M,parts", CASES)
def test_flex_mask_matches_reference(T, W, C, M, parts):
    t, kw = _inputs(T, W, C, 0, M, seeded(T * W + M))
    t = {k: x.detach() for k, x in t.items()}  # flex_attention has no backward on the CPU
    with torch.no_grad():
        ref = window_attention_ref(t["q"], _parts(t, kw, parts), W, chunk=C)
        got = flex.window_attention_flex(t["q"], _parts(t, kw, parts), W, chunk=C, compiled=False)
    assert_close(got, ref, name=f"flex {parts}")


def test_fused_dispatch_keeps_cpu_and_continuations_on_the_chunked_path(monkeypatch):
    t, kw = _inputs(200, 16, 8, 0, 4, seeded(3))
    raw = Segments(Stream(t["k"], t["v"]))
    assert not flex.eligible(t["q"], raw)  # CPU tensors
    assert not flex.eligible(t["q"], raw, q_start=8)  # a continuation
    args = (t["q"], raw, 16)

    def flex_must_not_run(*a, **k):
        raise AssertionError("flex_attention called on a CPU tensor")

    monkeypatch.setattr(flex, "window_attention_flex", flex_must_not_run)
    with torch.no_grad():
        assert torch.equal(window_attention_fused(*args, chunk=8), window_attention(*args, chunk=8))
    # where flex is eligible it runs, unless a bias or store entries need the chunked path
    sentinel = torch.full_like(t["q"], 7.0)
    monkeypatch.setattr(flex, "eligible", lambda *a, **k: True)
    monkeypatch.setattr(flex, "window_attention_flex", lambda *a, **k: sentinel)
    with torch.no_grad():
        assert window_attention_fused(*args, chunk=8) is sentinel
        segs = Segments(Stream(t["k"], t["v"]), Stream(t["fk"], t["fv"], 0, torch.tensor(0.5)))
        biased = window_attention_fused(t["q"], segs, 16, chunk=8)
        assert not torch.equal(biased, sentinel)
        assert torch.equal(biased, window_attention(t["q"], segs, 16, chunk=8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("T", [40, 128, 300])  # shorter than one 128 x 128 tile, one tile, a partial third
def test_flex_on_cuda_matches_chunked_forward_and_backward(T):
    W, C, M = 32, 16, 8
    t, kw = _inputs(T, W, C, 0, M, seeded(T), H=4, Hk=2, Dh=16)
    gpu = {k: x.detach().cuda().requires_grad_() for k, x in t.items()}
    kw["mem_pos"] = kw["mem_pos"].cuda()
    segs = _segs(gpu, kw)
    assert flex.eligible(gpu["q"], segs)
    outs = {}
    for name, fn in (("chunked", window_attention), ("flex", window_attention_fused)):
        for x in gpu.values():
            x.grad = None
        y = fn(gpu["q"], segs, W, chunk=C)
        y.pow(2).sum().backward()
        outs[name] = [y] + [x.grad for x in gpu.values()]
    for a, b, n in zip(outs["flex"], outs["chunked"], ["y"] + [f"d{k}" for k in gpu]):
        assert_close(a, b, rtol=1e-3, name=n)
