"""Perplexity and length generalisation: streamed (recurrent) evaluation equals the parallel one for every
preset, every context length scores the same target tokens, and too-short documents give a clear error."""
import math

import numpy as np
import pytest
import torch

from bmojo import BMojoLM
from bmojo.config import ConfigError
from bmojo.eval.ppl import binned, eval_regions, length_eval, window_losses
from tests.helpers import assert_close, tiny

PRESETS = ["transformer", "swa", "mamba", "hybrid", "bmojo-f", "bmojo"]


@pytest.mark.parametrize("name", PRESETS)
def test_streamed_equals_parallel(name):
    torch.manual_seed(0)
    model = BMojoLM(tiny(name, max_seq_len=16)).eval()  # capacity below L: streaming sizes its own cache
    x = torch.randint(0, 61, (2, 45))
    y = torch.randint(0, 61, (2, 45))
    parallel = window_losses(model, x, y, segment=64)
    for seg in (7, 16):
        assert_close(window_losses(model, x, y, segment=seg), parallel, rtol=1e-5, name=f"{name} segment {seg}")


def test_regions_round_robin_and_errors():
    docs = [np.arange(100), np.arange(30), np.arange(9)]
    regions = eval_regions(docs, 9, max_regions=5)
    assert [r[0] for r in regions] == [0, 0, 10, 10, 20]  # doc0, doc1, doc0, doc1, doc0: disjoint, from the start
    assert all(len(r) == 10 for r in regions)
    with pytest.raises(ConfigError, match="no document has 201 tokens"):
        eval_regions(docs, 200, 4)


def test_length_eval_scores_the_same_tokens():
    torch.manual_seed(0)
    model = BMojoLM(tiny("bmojo", max_seq_len=8))
    regions = eval_regions([np.random.default_rng(0).integers(0, 61, 300)], 64, 4)
    res = length_eval(model, regions, [8, 16, 64], np.ones(61, dtype=np.int64), segment=16)
    assert [res[L]["tokens"] for L in (8, 16, 64)] == [256, 256, 256]
    assert [res[L]["windows"] for L in (8, 16, 64)] == [32, 16, 4]
    for r in res.values():
        assert len(r["per_position"]) in (8, 16, 64)
        assert math.isclose(r["ppl"], math.exp(r["loss"])) and math.isclose(r["bpb"], r["loss"] / math.log(2))
    # against a direct computation: every window read from a fresh state, in parallel
    data = torch.from_numpy(np.stack(regions))
    for L in (8, 64):
        x, y = data[:, :-1].reshape(-1, L), data[:, 1:].reshape(-1, L)
        direct = torch.nn.functional.cross_entropy(model(x).logits.flatten(0, 1), y.flatten(), reduction="none")
        assert_close(torch.tensor(res[L]["per_position"]), direct.view(-1, L).mean(0), rtol=1e-5, name=f"L={L}")
    with pytest.raises(ConfigError, match="does not divide"):
        length_eval(model, regions, [48], np.ones(61, dtype=np.int64))


def test_binned_means():
    pos, means = binned(list(range(10)), 5)
    assert means.tolist() == [0.5, 2.5, 4.5, 6.5, 8.5] and pos.tolist() == [0.5, 2.5, 4.5, 6.5, 8.5]
