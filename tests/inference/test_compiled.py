"""compile_step(): the compiled decode step gives eager's logits, and its graphs do not grow with the position
(dynamo only, with a counting backend: inductor's C++ build is too slow for the suite; benchmarks/decode_compile.py
times the real thing)."""
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from bmojo import BMojoLM
from bmojo.inference import compile_step, generate
from tests.helpers import C, W, randomise_extras, seeded, tiny

STEPS = 5 * 2 * W  # past many chunk ends (C) and wraps of every ring (W raw, 2W fading)


@pytest.mark.parametrize("name,kw,graphs", [
    ("bmojo", {}, 4),  # ordinary tokens, a chunk's last token (the memory update), the first trace, slot 0
    ("bmojo", dict(selection_gate=True, gate_read="logit", null_key=True, fading_gate=-1.0), 4),
    ("bmojo-f", {}, 3),
    ("transformer", {}, 3),
    ("swa", {}, 3),
    ("mamba", {}, 3),
])
def test_compiled_step_matches_eager_with_bounded_graphs(name, kw, graphs):
    torch.manual_seed(0)
    m = BMojoLM(tiny(name, **kw)).eval()
    randomise_extras(m)
    ids = torch.randint(0, 61, (2, 3 * C + 1), generator=seeded(0))  # the prefill ends inside a chunk
    torch._dynamo.reset()
    counter = CompileCounter()
    step = compile_step(m, backend=counter)
    with torch.no_grad():
        eager = m(ids, m.init_state(2, capacity=128), return_state=True).state
        compiled = m(ids, m.init_state(2, capacity=128), return_state=True).state
        tok = ids[:, -1]
        for _ in range(STEPS):
            a, _ = m.step(tok, eager)
            b, _ = step(tok, compiled)
            torch.testing.assert_close(b, a, rtol=0, atol=0)
            tok = a.argmax(-1)
    assert compiled.pos == eager.pos == ids.shape[1] + STEPS
    assert 1 <= counter.frame_count <= graphs, counter.frame_count


def test_generate_with_a_compiled_step_is_generate():
    torch.manual_seed(0)
    m = BMojoLM(tiny("bmojo")).eval()
    prompt = torch.randint(0, 61, (1, 5), generator=seeded(2))
    torch._dynamo.reset()
    out = generate(m, prompt, 3 * C, step=compile_step(m, backend="eager"))
    assert torch.equal(out, generate(m, prompt, 3 * C))
