"""`bmojo train`: train a preset on a text corpus (packed sequences, validation perplexity, checkpoints).

The corpus is prepared on first use (see `bmojo data prepare`).  The run folder gets metrics.jsonl and a
checkpoint (safetensors + JSON + the tokenizer) that `bmojo eval ppl` and `bmojo generate` read; `--resume`
continues an interrupted run from its last checkpoint (use --save-every to checkpoint during training)."""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from bmojo.cli.common import add_dataclass_args, dataclass_from_args, model_overrides
from bmojo.cli.data import add_corpus_args
from bmojo.data.text.corpus import open_corpus
from bmojo.models import PRESETS
from bmojo.train import dist
from bmojo.train.config import TrainConfig
from bmojo.train.lm import DEFAULT_LM_MODEL, LMSpec, train_lm

TRAIN_DEFAULTS = {"steps": 1000, "batch_size": 16, "eval_every": 100, "save_every": 200}


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on a text corpus", description=__doc__)
    p.add_argument("--preset", default="bmojo", choices=sorted(PRESETS), help="which model of the family")
    add_corpus_args(p)
    p.add_argument("--seq-len", type=int, default=LMSpec.seq_len, help="training context length in tokens")
    p.add_argument("--params", type=int, default=LMSpec.params, help="target parameter count (sizes d_model)")
    p.add_argument("--model-opt", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"ModelConfig override (repeatable); built-in: {DEFAULT_LM_MODEL}")
    p.add_argument("--out", default=None, help="run folder (default runs/train/CORPUS-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--config", default=None, metavar="FILE",
                   help='a JSON file of settings: {"preset", "seq_len", "params", "model": {ModelConfig fields}, '
                        '"train": {TrainConfig fields}}; options given on the command line win')
    add_dataclass_args(p, TrainConfig, skip=("target_acc",), defaults=TRAIN_DEFAULTS)
    p.set_defaults(func=run)


def read_config(file: str) -> tuple[dict, dict, dict]:
    """(run settings, model overrides, train settings) from a JSON config file, every field checked: unknown or
    mistyped fields are errors that name the file and the field."""
    from bmojo.config import ConfigError, ModelConfig, checked_kwargs
    from bmojo.utils.jsonfile import read_json

    path = Path(file)
    d = read_json(path, ConfigError, "bmojo train config")
    known = [f.name for f in fields(LMSpec)] + ["train"]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; known fields: {known}")
    spec = checked_kwargs(LMSpec, {k: v for k, v in d.items() if k != "train"}, str(path))
    if "preset" in spec and spec["preset"] not in PRESETS:
        raise ConfigError(f"{path}: field preset={spec['preset']!r}; allowed: {sorted(PRESETS)}")
    model = checked_kwargs(ModelConfig, spec.pop("model", {}), f"{path}: model")
    train = checked_kwargs(TrainConfig, d.get("train", {}), f"{path}: train")
    return spec, model, train


def run(args) -> int:
    from bmojo.config import ConfigError

    file_run, file_model, file_train = ({}, {}, {})
    if args.config:
        file_run, file_model, file_train = read_config(args.config)
    pick = {k: (getattr(args, k) if getattr(args, k) != default else file_run.get(k, default))
            for k, default in (("preset", "bmojo"), ("seq_len", LMSpec.seq_len), ("params", LMSpec.params))}
    spec = LMSpec(pick["preset"], pick["seq_len"], pick["params"], {**file_model, **model_overrides(args.model_opt)})
    try:
        tcfg = dataclass_from_args(TrainConfig, args, {**TRAIN_DEFAULTS, **file_train})
    except ConfigError as e:
        raise ConfigError(f"{args.config}: {e}" if args.config else str(e)) from None
    d = dist.setup(tcfg.parallel, tcfg.batch_size)  # under torchrun: the process group, before any file is touched
    main = d is None or d.main
    if not main:
        d.barrier()  # rank 0 prepares the corpus (first use) while the others wait
    corpus = open_corpus(args.corpus, tokenizer=args.tokenizer, vocab_size=args.vocab_size, root=args.data)
    if d is not None and main:
        d.barrier()
    out = Path(args.out or f"runs/train/{corpus.manifest['corpus']}-{spec.preset}")
    if main:
        print(f"train: {spec.preset} on {corpus.folder} ({corpus.summary()}), {tcfg.steps} steps of "
              f"{tcfg.batch_size}x{spec.seq_len} tokens -> {out}" + (f", {d.world} processes ({d.mode})" if d else ""),
              flush=True)
    model, res = train_lm(spec, corpus, tcfg, out, resume=args.resume)
    if not main:
        return 0
    summary = {"preset": spec.preset, "params": model.num_params(), "steps": res.steps,
               "train_seconds": res.train_seconds, "val_loss": res.eval.get("loss"), "val_ppl": res.eval.get("ppl"),
               "checkpoint": res.checkpoint}
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    print(f"{spec.preset} ({model.num_params():,} params): validation perplexity {res.eval.get('ppl', float('nan')):.3f}"
          f" after {res.steps} steps ({res.train_seconds:.0f}s); checkpoint {res.checkpoint}")
    return 0
