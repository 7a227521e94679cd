"""Language modelling on a prepared corpus with the shared training loop.

Training reads packed windows of `seq_len + 1` tokens at random offsets of the training split (documents are
joined by the separator id, so a window may cross into the next document, as in GPT-2 and nanoGPT); the batch
of step s depends only on (seed, s), so a resumed run sees the data an uninterrupted one would.  Validation
perplexity is measured on fixed windows spread evenly over the validation split.  The checkpoint carries the
tokenizer, so `bmojo eval ppl` and `bmojo generate` need nothing else.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bmojo.config import ConfigError, ModelConfig, _f
from bmojo.data.text.corpus import TokenCorpus
from bmojo.data.text.tokenizer import describe_tokenizer, same_tokens, tokenizer_files
from bmojo.models import BMojoLM, preset, size_to_params
from bmojo.train.checkpoint import has_checkpoint, lm_tokenizer, load_checkpoint, read_meta
from bmojo.train.config import TrainConfig
from bmojo.train.loop import TrainResult, train

# Shared by every preset unless overridden: 4 layers, a 64-token window, 32 eidetic tokens per B layer.
DEFAULT_LM_MODEL = {"n_layers": 4, "n_heads": 4, "window": 64, "chunk": 32, "memory_size": 32, "ssm_head_dim": 32}


@dataclass
class LMSpec:
    preset: str = _f("bmojo", "model preset (transformer, swa, mamba, hybrid, bmojo-f, bmojo)")
    seq_len: int = _f(256, "training context length in tokens")
    params: int = _f(1_500_000, "target parameter count (d_model is sized to it)")
    model: dict = field(default_factory=dict, metadata={"help": "ModelConfig overrides"})

    def __post_init__(self):
        if not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise ConfigError(f"seq_len={self.seq_len!r}: must be an integer >= 2")


def model_config(spec: LMSpec, vocab_size: int, max_len: int | None = None) -> ModelConfig:
    """The run's ModelConfig: the preset with the overrides, and d_model sized to `spec.params` unless the
    overrides fix it (the recipes in configs/ do)."""
    kw = {**DEFAULT_LM_MODEL, **spec.model, "vocab_size": vocab_size,
          "max_seq_len": max(max_len or 0, 16 * spec.seq_len, spec.model.get("max_seq_len", 0))}
    return preset(spec.preset, **kw) if "d_model" in spec.model else size_to_params(spec.preset, spec.params, **kw)


def init_config(init: str | Path, seq_len: int) -> tuple[ModelConfig, dict]:
    """(the ModelConfig, the settings record) of the checkpoint a run starts from (`bmojo train --init`): a `bmojo
    train` checkpoint or one `bmojo convert` wrote.  Only its config is read; max_seq_len is raised to 16x the
    training length as for every run (it sizes no weight)."""
    meta = read_meta(init)
    cfg = ModelConfig.from_dict({**meta["model"], "max_seq_len": max(meta["model"].get("max_seq_len", 0), 16 * seq_len)})
    return cfg, meta


def init_name(meta: dict) -> str:
    """What to call the model of a checkpoint in a run's settings: its preset, or the architecture it was converted
    from."""
    src = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    return (meta.get("lm") or {}).get("preset") or src.get("hf_model_type") or "checkpoint"


def _windows(tokens: np.ndarray, starts, seq_len: int) -> torch.Tensor:
    """(len(starts), seq_len + 1) int64 windows of `tokens` at `starts`."""
    return torch.from_numpy(np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(np.int64))


def _check_length(tokens: np.ndarray, seq_len: int, split: str) -> None:
    if len(tokens) < seq_len + 2:
        raise ConfigError(f"the {split} split has {len(tokens)} tokens, fewer than seq_len + 2 = {seq_len + 2}")


def packed_batches(tokens: np.ndarray, batch: int, seq_len: int, seed: int):
    """step -> (inputs, labels), each (batch, seq_len): windows at offsets drawn from (seed, step)."""
    _check_length(tokens, seq_len, "training")

    def batch_fn(step: int):
        seq = _windows(tokens, np.random.default_rng([seed, step]).integers(0, len(tokens) - seq_len - 1, batch),
                       seq_len)
        return seq[:, :-1], seq[:, 1:]

    return batch_fn


def fixed_windows(tokens: np.ndarray, n_batches: int, batch: int, seq_len: int):
    """n_batches (inputs, labels) of windows spread evenly over `tokens` (the same every call)."""
    n = n_batches * batch
    _check_length(tokens, seq_len, "validation")
    seq = _windows(tokens, np.linspace(0, len(tokens) - seq_len - 1, n).astype(np.int64), seq_len)
    return [(seq[i:i + batch, :-1], seq[i:i + batch, 1:]) for i in range(0, n, batch)]


def train_lm(spec: LMSpec, corpus: TokenCorpus, tcfg: TrainConfig, out_dir: str | Path | None = None, *,
             resume: bool = False, overwrite: bool = False, desc: str | None = None,
             init: str | Path | None = None) -> tuple[BMojoLM, TrainResult]:
    """Train `spec.preset` on `corpus`; the checkpoint (under out_dir) holds the model, optimizer and tokenizer.
    `init`: start from that checkpoint's model and weights instead (the corpus must be tokenized with its
    tokenizer); a resumed run that started so rebuilds its model from its own checkpoint."""
    tok = corpus.tokenizer
    ckpt = Path(out_dir) / "checkpoint" if out_dir is not None else None
    saved = read_meta(ckpt) if resume and ckpt is not None and has_checkpoint(ckpt) else None
    started = None
    if init is not None:
        cfg, init_meta = init_config(init, spec.seq_len)
        init_tok = lm_tokenizer(init_meta)[0]
        if not same_tokens(tok, init_tok):
            raise ConfigError(f"--init {init}: the checkpoint's tokenizer is {describe_tokenizer(init_tok)}, the corpus "
                              f"{corpus.folder} is tokenized with {describe_tokenizer(tok)}; prepare the corpus with "
                              "the checkpoint's tokenizer (leave out --tokenizer with --init)")
        started = {"checkpoint": init_meta["_path"], "from": init_name(init_meta)}
    elif saved is not None and "init" in saved:
        cfg, started = ModelConfig.from_dict(saved["model"]), saved["init"]
    else:
        cfg = model_config(spec, tok.vocab_size)
    meta = {"lm": asdict(spec), "tokenizer": tok.to_dict(), "corpus": {"folder": str(corpus.folder),
            "name": corpus.manifest["corpus"], "source": corpus.manifest["source"], "digest": corpus.digest}}
    if saved is not None:
        _check_resumable(saved, cfg, tcfg, meta)
    torch.manual_seed(tcfg.seed)
    if init is not None and saved is None:
        model, weights = load_checkpoint(init, overrides={"max_seq_len": cfg.max_seq_len})
        started["weights_sha256"] = weights["weights_sha256"]
    else:
        model = BMojoLM(cfg)
    if started is not None:
        meta["init"] = started
    evals = fixed_windows(corpus.tokens("val"), tcfg.eval_batches, tcfg.batch_size, spec.seq_len)
    res = train(model, tcfg, packed_batches(corpus.tokens("train"), tcfg.batch_size, spec.seq_len, tcfg.seed),
                eval_batches=evals, out_dir=out_dir, meta=meta, resume=resume, overwrite=overwrite,
                desc=desc or spec.preset, files=tokenizer_files(tok))
    return model, res


def _check_resumable(saved: dict, cfg: ModelConfig, tcfg: TrainConfig, meta: dict) -> None:
    if saved.get("model") != cfg.to_dict():
        diff = sorted(k for k in cfg.to_dict() if saved.get("model", {}).get(k) != cfg.to_dict()[k])
        raise ConfigError(f"--resume: the checkpoint's model differs in {diff}; pass the options it was trained with")
    corpus = saved.get("corpus", {})
    if corpus.get("digest") is not None and corpus["digest"] != meta["corpus"]["digest"]:
        raise ConfigError(f"--resume: the checkpoint was trained on corpus digest {corpus['digest']}, "
                          f"{meta['corpus']['folder']} now has digest {meta['corpus']['digest']}: its tokens changed")
    if saved.get("tokenizer") != meta["tokenizer"]:
        raise ConfigError(f"--resume: the checkpoint was trained with tokenizer {saved.get('tokenizer')}")
    old = saved.get("train", {})
    diff = sorted(k for k, v in tcfg.to_dict().items() if k not in TrainConfig.MAY_CHANGE_ON_RESUME
                  and old.get(k) != v)
    if diff:
        raise ConfigError(f"--resume: training options {diff} differ from the checkpoint's; only --steps may change")
