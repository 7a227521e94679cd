"""Upcycling a Transformer or a Mamba into B'MOJO: every source tensor is copied, and the new model starts
where its source is (exactly from Mamba; exactly within the window from a Transformer)."""
import pytest
import torch

from bmojo import BMojoLM
from bmojo.config import ConfigError
from bmojo.models.upcycle import upcycle
from tests.helpers import assert_close, seeded, tiny


def _trained_like(name, **kw):
    torch.manual_seed(1)
    m = BMojoLM(tiny(name, **kw))
    with torch.no_grad():  # move every tensor off its init (norms at 1, zero-init heads) like training would
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


@pytest.mark.parametrize("target", ["bmojo", "bmojo-f"])
def test_from_mamba_starts_exactly_at_the_source(target):
    src = _trained_like("mamba")
    up = upcycle(src, target, n_heads=2, window=8, chunk=4, memory_size=3).eval()
    ids = torch.randint(0, 61, (2, 50), generator=seeded(0))  # several windows long
    with torch.no_grad():
        assert_close(up(ids).logits, src(ids).logits, rtol=1e-5, name=f"mamba -> {target}")
        state = up.init_state(2)
        steps = torch.stack([up.step(ids[:, t], state)[0] for t in range(20)], 1)
    assert_close(steps, src(ids[:, :20]).logits, rtol=1e-5, name="decoded")
    for i, block in enumerate(up.layers):  # the source's mixer is now each layer's SSM
        assert torch.equal(block.mixer.ssm.A_log, src.layers[i].mixer.A_log)


@pytest.mark.parametrize("target", ["bmojo", "bmojo-f"])
def test_from_transformer_equals_the_source_within_the_window(target):
    src = _trained_like("transformer", attn_conv=False)
    up = upcycle(src, target, window=16, chunk=8, memory_size=4).eval()
    ids = torch.randint(0, 61, (2, 40), generator=seeded(1))
    with torch.no_grad():
        assert_close(up(ids[:, :16]).logits, src(ids[:, :16]).logits, rtol=1e-5, name="T <= W")
        far = (up(ids).logits - src(ids).logits)[:, 16:].abs().max()
    assert far > 0  # past the window the bounded model differs, as it must
    for a, b in zip(up.layers, src.layers):
        assert torch.equal(a.mixer.q_proj.weight, b.mixer.q_proj.weight)
        assert torch.equal(a.mlp.down_proj.weight, b.mlp.down_proj.weight)
        assert not a.mixer.fk_proj.weight.any()


def test_upcycle_refuses_other_sources_and_shape_changes():
    with pytest.raises(ConfigError, match="pattern 'A'.*pattern 'M'.*got pattern 'MA'"):
        upcycle(BMojoLM(tiny("hybrid")))
    with pytest.raises(ConfigError, match=r"cannot override \['d_model'\]"):
        upcycle(BMojoLM(tiny("transformer")), d_model=64)
    with pytest.raises(ConfigError, match="upcycle target 'swa'"):
        upcycle(BMojoLM(tiny("transformer")), "swa")
