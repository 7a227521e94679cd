"""Language-model training on a prepared corpus: deterministic packed batches, checkpoints that carry the
tokenizer, resume equal to an uninterrupted run, and clear errors for a resume with other options."""
import numpy as np
import pytest
import torch

from bmojo.config import ConfigError
from bmojo.data.text.tokenizer import load_tokenizer
from bmojo.train import TrainConfig, load_checkpoint
from bmojo.train.lm import LMSpec, fixed_windows, packed_batches, train_lm
from tests.helpers import TINY_LM

SPEC = LMSpec("bmojo", seq_len=16, params=15_000, model=TINY_LM)


def test_packed_batches_are_a_function_of_the_step(text_corpus):
    tokens = text_corpus.tokens("train")
    a, b = packed_batches(tokens, 4, 16, seed=1), packed_batches(tokens, 4, 16, seed=1)
    x3, y3 = a(3)
    assert torch.equal(x3, b(3)[0]) and not torch.equal(x3, a(4)[0])
    assert x3.shape == (4, 16) and torch.equal(x3[:, 1:], y3[:, :-1])  # labels are the inputs shifted by one
    w1, w2 = fixed_windows(text_corpus.tokens("val"), 2, 3, 16), fixed_windows(text_corpus.tokens("val"), 2, 3, 16)
    assert len(w1) == 2 and all(torch.equal(p[0], q[0]) for p, q in zip(w1, w2))
    with pytest.raises(ConfigError, match="fewer than seq_len"):
        packed_batches(np.zeros(10, np.uint8), 2, 16, 0)


def test_train_lm_learns_and_checkpoints_the_tokenizer(text_corpus, tmp_path):
    tcfg = TrainConfig(steps=30, batch_size=8, lr=1e-2, warmup=5, eval_every=10, eval_batches=2, progress=False)
    model, res = train_lm(SPEC, text_corpus, tcfg, tmp_path)
    ppls = [h["eval_ppl"] for h in res.history if "eval_ppl" in h]
    assert len(ppls) == 3 and ppls[-1] < ppls[0] and ppls[-1] < 40  # uniform over bytes would be 256
    loaded, meta = load_checkpoint(res.checkpoint)
    assert meta["lm"]["seq_len"] == 16 and meta["tokenizer"]["kind"] == "byte"
    tok = load_tokenizer(meta["tokenizer"], meta["_path"])
    ids = torch.from_numpy(tok.encode("To be, or not to be"))[None]
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_resume_equals_uninterrupted(text_corpus, tmp_path, monkeypatch):
    tcfg = TrainConfig(steps=8, batch_size=4, warmup=2, eval_every=4, eval_batches=1, save_every=4, progress=False)
    full, _ = train_lm(SPEC, text_corpus, tcfg, tmp_path / "full")

    def interrupted(*args):  # the same data, but the run dies at step 6 (after the step-4 checkpoint)
        batch_fn = packed_batches(*args)
        return lambda step: (_ for _ in ()).throw(KeyboardInterrupt) if step == 6 else batch_fn(step)

    with monkeypatch.context() as m:
        m.setattr("bmojo.train.lm.packed_batches", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_lm(SPEC, text_corpus, tcfg, tmp_path / "split")
    resumed, res = train_lm(SPEC, text_corpus, tcfg, tmp_path / "split", resume=True)
    assert res.steps == 8
    for (n, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n


def test_resume_with_other_options_is_refused(text_corpus, tmp_path):
    tcfg = TrainConfig(steps=2, batch_size=4, eval_every=0, eval_batches=1, progress=False)
    train_lm(SPEC, text_corpus, tcfg, tmp_path)
    other = LMSpec("bmojo", seq_len=16, params=15_000, model={**TINY_LM, "window": 16})
    with pytest.raises(ConfigError, match="differs in .*window"):
        train_lm(other, text_corpus, tcfg, tmp_path, resume=True)
    with pytest.raises(ConfigError, match=r"\['lr'\]"):
        train_lm(SPEC, text_corpus, TrainConfig(**{**tcfg.to_dict(), "lr": 1e-4}), tmp_path, resume=True)
