"""Synthetic tasks: deterministic for a seed, hand-checked small examples, labels exactly where asked,
clear errors for options that cannot work."""
import numpy as np
import pytest
import torch

from bmojo.config import ConfigError
from bmojo.data.synthetic import (IGNORE, CopyConfig, MQARConfig, PasskeyConfig, RecallConfig, batch_stream,
                                  make_task, mqar, passkey, selective_copying, in_context_recall,
                                  noisy_in_context_recall, fuzzy_in_context_recall)


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name", ["mqar", "in_context_recall", "noisy_in_context_recall", "fuzzy_in_context_recall",
                                  "selective_copying", "passkey"])
def test_deterministic_for_a_seed(name):
    _, gen = make_task(name)
    a, b, c = gen(8, rng(3)), gen(8, rng(3)), gen(8, rng(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].dtype == a[1].dtype == torch.int64 and a[0].shape == a[1].shape
    assert (a[1] != IGNORE).any()


def test_mqar_semantics():
    cfg = MQARConfig(vocab_size=32, seq_len=40, num_kv_pairs=4, query_start=20)
    x, y = mqar(cfg, 64, rng(1))
    for b in range(64):
        keys, vals = x[b, 0:8:2].tolist(), x[b, 1:8:2].tolist()
        assert all(1 <= k < 16 for k in keys) and all(16 <= v < 32 for v in vals)
        assert len(set(keys)) == 4 and len(set(vals)) == 4
        asked = (y[b] != IGNORE).nonzero().flatten().tolist()
        assert len(asked) == 4 and all(p >= 20 and (p - 20) % 2 == 0 for p in asked)
        for p in asked:  # the query is the key, the label is its value
            i = keys.index(int(x[b, p]))
            assert int(y[b, p]) == vals[i]
    assert (x[:, 8:] != 0).float().mean() > 0.9  # random filler


def test_mqar_hand_example_without_noise():
    cfg = MQARConfig(vocab_size=12, seq_len=12, num_kv_pairs=2, random_non_queries=False, power_a=1.0)
    x, y = mqar(cfg, 1, rng(0))
    k1, v1, k2, v2 = x[0, :4].tolist()
    qs = (y[0] != IGNORE).nonzero().flatten().tolist()
    rest = [int(t) for i, t in enumerate(x[0]) if i >= 4 and i not in qs]
    assert rest == [0] * len(rest) and sorted(int(x[0, q]) for q in qs) == sorted([k1, k2])
    assert {int(x[0, q]): int(y[0, q]) for q in qs} == {k1: v1, k2: v2}


def test_power_law_puts_queries_near_the_start():
    x, y = mqar(MQARConfig(vocab_size=256, seq_len=256, num_kv_pairs=4, power_a=0.01), 256, rng(2))
    pos = (y != IGNORE).nonzero()[:, 1].float()
    assert pos.median() < 8 + (256 - 8) / 4


@pytest.mark.parametrize("kw,match", [
    (dict(vocab_size=16, num_kv_pairs=8), "vocab_size.*too small for 8 pairs"),
    (dict(seq_len=20, num_kv_pairs=8), "more pairs than fit"),
    (dict(query_start=40, seq_len=64, num_kv_pairs=16), "more pairs than fit"),
    (dict(query_start=3, num_kv_pairs=4), "query_start=3.*>= 2\\*num_kv_pairs = 8"),
    (dict(power_a=0.0), "power_a"),
])
def test_mqar_bad_options(kw, match):
    with pytest.raises(ConfigError, match=match):
        MQARConfig(**kw)


def test_in_context_recall_labels_only_answerable_values():
    x, y = in_context_recall(RecallConfig(vocab_size=32, seq_len=64, num_keys=4), 16, rng(0))
    for b in range(16):
        mapping, seen = {}, set()
        for t in range(0, 64, 2):
            k, v = int(x[b, t]), int(x[b, t + 1])
            assert mapping.setdefault(k, v) == v  # one value per key in a sequence
            assert (int(y[b, t]) == v) == (k in seen) and (int(y[b, t]) == IGNORE) == (k not in seen)
            assert int(y[b, t + 1]) == IGNORE
            seen.add(k)


def test_noisy_and_fuzzy_variants():
    x, y = noisy_in_context_recall(RecallConfig(vocab_size=40, seq_len=128, num_keys=4, noise_frac=0.3), 8, rng(0))
    noise = x >= 20  # keys 0..9, values 10..19 (V/4 each here), noise from 20 up
    assert noise.float().mean() > 0.1 and (y[noise] == IGNORE).all()  # nothing is asked at a noise token
    assert ((y != IGNORE) & ~noise).any()
    xf, yf = fuzzy_in_context_recall(RecallConfig(vocab_size=40, seq_len=128, num_keys=4, max_len=3), 8, rng(0))
    assert (yf != IGNORE).any()


def test_selective_copying_hand_example():
    x, y = selective_copying(CopyConfig(vocab_size=10, seq_len=12, num_tokens=3), 1, rng(5))
    toks = [int(t) for t in x[0, :9] if t >= 2]
    assert len(toks) == 3 and int(x[0, 9]) == 1  # context 0..8, the signal at 9
    assert y[0, 9:12].tolist() == toks and (y[0, :9] == IGNORE).all()
    assert x[0, 10:12].tolist() == toks[:2]  # teacher forcing


def test_passkey_depth_and_labels():
    cfg = PasskeyConfig(vocab_size=32, seq_len=50, digits=3, depth=0.0)
    x, y = passkey(cfg, 4, rng(0))
    assert (x[:, 0] == 0).all()
    key = x[:, 1:4]
    assert ((key >= 2) & (key < 12)).all() and ((x[:, 4:47] >= 12)).all()  # filler never looks like the key
    assert torch.equal(y[:, 47:50], key) and (x[:, 47] == 1).all() and (y[:, :47] == IGNORE).all()
    assert torch.equal(x[:, 48:50], key[:, :2])
    deep = passkey(PasskeyConfig(vocab_size=32, seq_len=50, digits=3, depth=1.0), 2, rng(0))[0]
    assert (deep[:, 43] == 0).all() and (deep[:, 47] == 1).all()  # the needle ends right before the query


def test_unknown_task_and_option():
    with pytest.raises(ConfigError, match="unknown task 'mqr'"):
        make_task("mqr")
    with pytest.raises(ConfigError, match=r"task 'mqar': unknown field\(s\) \['pairs'\]"):
        make_task("mqar", pairs=3)


def test_batch_stream_is_a_function_of_the_step():
    _, gen = make_task("mqar")
    at = batch_stream(gen, 4, seed=1)
    assert torch.equal(at(5)[0], at(5)[0]) and not torch.equal(at(5)[0], at(6)[0])


def test_random_filler_is_todays_stream():
    """filler='random' draws exactly what the generator drew before the option existed (uniform over the
    vocabulary from the same rng calls), so earlier results stay comparable."""
    _, gen = make_task("mqar", seq_len=64, num_kv_pairs=8, query_start=32)
    x, y = gen(4, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    _distinct = lambda lo, hi, n: np.argsort(rng.random((4, hi - lo)), axis=1)[:, :n] + lo
    _distinct(1, 128, 8), _distinct(128, 256, 8)
    filler = rng.integers(0, 256, (4, 64))
    free = (y.numpy() == IGNORE)  # neither a query ...
    free[:, :16] = False  # ... nor a pair
    assert free.sum() == 4 * (64 - 16 - 8) and (x.numpy() == filler)[free].all()


@pytest.mark.parametrize("task,lo", [("mqar", 0), ("passkey", 12)])
def test_predictable_fillers(task, lo):
    """markov: the fixed successor follows in ~MARKOV_STAY of the filler steps, the same chain in every sequence
    and seed; phrase: period PHRASE_LEN; random: neither.  All stay in the task's filler range."""
    from bmojo.data.synthetic import MARKOV_STAY, PHRASE_LEN, filler_tokens

    V = 256 if task == "mqar" else 64
    rng = np.random.default_rng(0)
    seqs = {k: filler_tokens(k, 64, 200, lo, V, rng) for k in ("random", "markov", "phrase")}
    for s in seqs.values():
        assert s.min() >= lo and s.max() < V
    nxt = {}
    for a, b in zip(seqs["markov"][:, :-1].ravel(), seqs["markov"][:, 1:].ravel()):
        nxt.setdefault(a, []).append(b)
    top = np.mean([max(np.bincount(v)) / len(v) for v in nxt.values() if len(v) >= 20])
    assert abs(top - MARKOV_STAY) < 0.05
    again = filler_tokens("markov", 64, 200, lo, V, np.random.default_rng(99))
    pairs = set(zip(again[:, :-1].ravel(), again[:, 1:].ravel()))
    common = {(a, max(set(v), key=v.count)) for a, v in nxt.items() if len(v) >= 20}
    assert len(common & pairs) / len(common) > 0.9, "another seed draws the same chain"
    ph = seqs["phrase"]
    assert (ph[:, PHRASE_LEN:] == ph[:, :-PHRASE_LEN]).all() and not (ph[:, 1:] == ph[:, :-1]).all()
    r = seqs["random"]
    assert (r[:, PHRASE_LEN:] == r[:, :-PHRASE_LEN]).mean() < 0.05
    _, gen = make_task(task, filler="markov", seq_len=64)
    x, y = gen(8, np.random.default_rng(1))
    assert (y != -100).any() and x.shape == (8, 64)


@pytest.mark.parametrize("task", ["mqar", "passkey"])
def test_unknown_filler_names_the_field(task):
    with pytest.raises(ConfigError, match="filler"):
        make_task(task, filler="zipf")
