"""Shared test helpers: one assert_close that reports the max error, tiny configs, named cases."""
from __future__ import annotations

import torch

from bmojo import ModelConfig, preset

W, C = 8, 4  # window and chunk of the tiny configs
LENGTHS = {"Wm1": W - 1, "W": W, "Wp1": W + 1, "odd": 13, "gt4W": 4 * W + 5}


def assert_close(actual, expected, rtol=1e-5, name="tensor"):
    """Max abs error relative to the largest expected magnitude; the message reports both."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    scale = expected.abs().max().item() if expected.numel() else 0.0
    assert err <= rtol * max(scale, 1e-12), f"{name}: max abs error {err:.3e} > {rtol:.0e} x max |expected| {scale:.3e}"


def tiny(name: str = "bmojo", **kw) -> ModelConfig:
    base = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, window=W, chunk=C, memory_size=6,
                d_state=4, ssm_head_dim=8, ssm_chunk=8, max_seq_len=256)
    base.update(kw)
    return preset(name, **base)


def seeded(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def assert_grads_close(fast, ref, names, rtol=1e-5):
    """Pairwise assert_close; a tensor no output reaches may be None on one side and zeros on the other."""
    for a, b, n in zip(fast, ref, names):
        if a is None or b is None:
            assert all(g is None or g.abs().max() == 0 for g in (a, b)), n
        else:
            assert_close(a, b, rtol=rtol, name=n)


def randomise_extras(module, std=0.3):
    """Give zero- or identity-initialised parts (innovation predictor, selection gate, attn_conv, null key) and the
    fading segment's logit offset (which may start far off) non-trivial values, so that tests exercise them."""
    with torch.no_grad():
        for n, p in module.named_parameters():
            if any(part in n for part in ("predictor", "attn_conv", "gate", "null_", "fading_bias")):
                p.normal_(0, std)
    return module


# A language model small enough to train for a few steps in a test.
TINY_LM = {"n_layers": 1, "n_heads": 2, "window": 8, "chunk": 4, "memory_size": 4, "ssm_head_dim": 8, "d_state": 4}


def hf_tokenizer_folder(folder, texts, bos: bool = True):
    """An HF tokenizer folder as a user or `bmojo convert` has one: tokenizer.json (a byte-level BPE with <unk>, <s>,
    </s>) and tokenizer_config.json naming BOS and EOS.  Returns the `tokenizers.Tokenizer`."""
    import json

    import tokenizers as tk

    folder.mkdir()
    tok = tk.Tokenizer(tk.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                              "add_bos_token": bos}))
    return tok
