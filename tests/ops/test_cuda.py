"""GPU parity (skipped without CUDA and the `gpu` extra): mamba_ssm's scan and causal-conv1d, as dispatched by
impl=fused, equal our references; a whole model with impl=fused on CUDA (flex_attention windows included)
equals impl=ref on the CPU."""
import importlib.util

import pytest
import torch

from bmojo import BMojoLM
from bmojo.ops.conv import causal_conv1d_fused, causal_conv1d_ref
from bmojo.ops.scan import selective_scan_ref
from bmojo.ops.scan import selective_scan_fused
from tests.helpers import assert_close, seeded, tiny

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _needs(pkg):
    return pytest.mark.skipif(importlib.util.find_spec(pkg) is None, reason=f"needs {pkg} (the `gpu` extra)")


@_needs("mamba_ssm")
@pytest.mark.parametrize("T", [1, 37, 300])
def test_mamba_ssm_scan_matches_reference(T):
    g = seeded(0)
    Bsz, E, N = 2, 24, 16
    ins = [torch.randn(Bsz, T, E, generator=g), torch.rand(Bsz, T, E, generator=g) + 0.05,
           -torch.rand(E, N, generator=g) - 0.3, torch.randn(Bsz, T, N, generator=g), torch.randn(Bsz, T, N, generator=g),
           torch.randn(E, generator=g)]
    cpu = [t.requires_grad_() for t in ins]
    gpu = [t.detach().cuda().requires_grad_() for t in ins]
    y1, h1 = selective_scan_ref(*cpu, output_final_state=True)
    y2, h2 = selective_scan_fused(*gpu, output_final_state=True)
    assert_close(y2.cpu(), y1, rtol=1e-4, name="y")
    assert_close(h2.cpu(), h1, rtol=1e-4, name="h_T")
    g1 = torch.autograd.grad(y1.square().sum(), cpu)
    g2 = torch.autograd.grad(y2.square().sum(), gpu)
    for a, b, n in zip(g2, g1, ["dx", "ddt", "dA", "dB", "dC", "dD"]):
        assert_close(a.cpu(), b, rtol=1e-3, name=n)


@_needs("causal_conv1d")
@pytest.mark.parametrize("T", [1, 3, 50])
def test_causal_conv1d_matches_reference(T):
    g = seeded(1)
    x, w, b = torch.randn(2, T, 32, generator=g), torch.randn(32, 4, generator=g), torch.randn(32, generator=g)
    y1, s1 = causal_conv1d_ref(x, w, b, output_final_state=True)
    y2, s2 = causal_conv1d_fused(x.cuda(), w.cuda(), b.cuda(), output_final_state=True)
    assert_close(y2.cpu(), y1, rtol=1e-4, name="y")
    assert_close(s2.cpu(), s1, rtol=1e-6, name="conv state")


@pytest.mark.parametrize("name,T", [("mamba", 45), ("hybrid", 45), ("bmojo", 45), ("swa", 200), ("bmojo", 200)])
def test_model_fused_on_cuda_matches_cpu_reference(name, T):
    """T >= 128 (with heads of 16) runs the windows through flex_attention (bmojo.ops.flex), shorter ones the
    chunked path."""
    torch.manual_seed(0)
    kw = dict(ssm_kind="mamba1", d_model=64) if T >= 128 else dict(ssm_kind="mamba1")
    ref = BMojoLM(tiny(name, impl="ref", **kw))
    fused = BMojoLM(tiny(name, impl="fused", **kw)).cuda()
    fused.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 61, (2, T), generator=seeded(2))
    assert_close(fused(ids.cuda()).logits.cpu(), ref(ids).logits, rtol=1e-4, name=f"{name} logits")
