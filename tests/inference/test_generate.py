"""generate(): sampling filters, seeds, stop token, streaming callback, argument errors."""
import pytest
import torch

from bmojo import BMojoLM, generate
from bmojo.inference import sample_next
from tests.helpers import seeded, tiny


def _model():
    torch.manual_seed(0)
    return BMojoLM(tiny("bmojo")).eval()


def test_seeded_sampling_is_reproducible_and_streams():
    m = _model()
    prompt = torch.randint(0, 61, (2, 5), generator=seeded(0))
    streamed = []
    a = generate(m, prompt, 12, temperature=1.0, top_k=10, top_p=0.9, seed=3, callback=streamed.append)
    b = generate(m, prompt, 12, temperature=1.0, top_k=10, top_p=0.9, seed=3)
    c = generate(m, prompt, 12, temperature=1.0, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (2, 17) and torch.equal(a[:, :5], prompt)
    assert torch.equal(torch.stack(streamed, 1), a[:, 5:])


def test_stop_token_ends_generation():
    m = _model()
    prompt = torch.randint(0, 61, (1, 5), generator=seeded(1))
    free = generate(m, prompt, 20)
    stop = int(free[0, 8])  # the 4th greedy token
    out = generate(m, prompt, 20, stop_token=stop)
    assert out.shape[1] <= 9 and int(out[0, -1]) == stop


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = seeded(0)
    ks = {int(sample_next(logits, top_k=2, generator=g)) for _ in range(200)}
    ps = {int(sample_next(logits, top_p=0.7, generator=g)) for _ in range(200)}
    assert ks == {0, 1} and ps == {0, 1}
    assert int(sample_next(logits, temperature=0)) == 0


@pytest.mark.parametrize("kw,match", [({"temperature": -1.0}, "temperature"), ({"top_k": 0}, "top_k"),
                                      ({"top_p": 1.5}, "top_p")])
def test_bad_sampling_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        sample_next(torch.zeros(1, 4), **kw)


def test_generate_argument_errors():
    m = _model()
    with pytest.raises(ValueError, match="prompt"):
        generate(m, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(m, torch.zeros(1, 2, dtype=torch.long), -1)
