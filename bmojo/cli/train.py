"""`bmojo train`: train a preset on a text corpus (packed sequences, validation perplexity, checkpoints).

The corpus is prepared on first use (see `bmojo data prepare`).  The run folder gets metrics.jsonl and a
checkpoint (safetensors + JSON + the tokenizer) that `bmojo eval ppl` and `bmojo generate` read; `--resume`
continues an interrupted run from its last checkpoint with the options stored in it (only --steps may change,
upwards).  A folder that holds a run is never replaced without --overwrite.  Ctrl-C stops after the current step
and saves a checkpoint to resume from."""
from __future__ import annotations

import json
import sys
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
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help=f"which model of the family (default: {LMSpec.preset})")
    add_corpus_args(p)
    p.add_argument("--seq-len", type=int, default=None,
                   help=f"training context length in tokens (default: {LMSpec.seq_len})")
    p.add_argument("--params", type=int, default=None,
                   help=f"target parameter count, which sizes d_model (default: {LMSpec.params:,})")
    p.add_argument("--model-opt", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"ModelConfig override (repeatable); built-in: {DEFAULT_LM_MODEL}")
    p.add_argument("--out", default=None, help="run folder (default runs/train/CORPUS-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint, with the "
                   "options stored there (give --steps to train further)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--init", default=None, metavar="CKPT", help="start from the model and weights of this checkpoint "
                   "(a `bmojo train` run's, or one `bmojo convert` wrote from Hugging Face) instead of a new preset: "
                   "leave out --preset, --params and --model-opt; the corpus is tokenized with the checkpoint's "
                   "tokenizer")
    p.add_argument("--config", default=None, metavar="FILE",
                   help='a JSON file of settings: {"preset", "seq_len", "params", "model": {ModelConfig fields}, '
                        '"train": {TrainConfig fields}, "vocab_size": the vocabulary it was sized for, "about": '
                        'text}; options given on the command line win (recipes: configs/)')
    p.add_argument("--dry-run", action="store_true", help="print the parameters, decode-state bytes, tokens per "
                   "step and an estimate of training memory per process, then stop: the model is built on the meta "
                   "device (no weights allocated) and no corpus is read")
    p.add_argument("--processes", type=int, default=None, help="with --dry-run: plan for this many data-parallel "
                   "processes (GPUs) (default: $WORLD_SIZE, else 1)")
    add_dataclass_args(p, TrainConfig, skip=("target_acc",), defaults=TRAIN_DEFAULTS)
    p.set_defaults(func=run)


def read_config(file: str) -> tuple[dict, dict, dict]:
    """(run settings, model overrides, train settings) from a JSON config file, every field checked: unknown or
    mistyped fields are errors that name the file and the field."""
    from bmojo.config import ConfigError, ModelConfig, checked_kwargs
    from bmojo.utils.jsonfile import read_json

    path = Path(file)
    d = read_json(path, ConfigError, "bmojo train config")
    known = [f.name for f in fields(LMSpec)] + ["train", "vocab_size", "about"]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; known fields: {known}")
    if "vocab_size" in d and not (isinstance(d["vocab_size"], int) and d["vocab_size"] > 1):
        raise ConfigError(f"{path}: field vocab_size={d['vocab_size']!r}: must be an integer > 1")
    spec = checked_kwargs(LMSpec, {k: v for k, v in d.items() if k not in ("train", "vocab_size", "about")}, str(path))
    if "vocab_size" in d:
        spec["vocab_size"] = d["vocab_size"]
    if "preset" in spec and spec["preset"] not in PRESETS:
        raise ConfigError(f"{path}: field preset={spec['preset']!r}; allowed: {sorted(PRESETS)}")
    model = checked_kwargs(ModelConfig, spec.pop("model", {}), f"{path}: model")
    train = checked_kwargs(TrainConfig, d.get("train", {}), f"{path}: train")
    return spec, model, train


def _spec_from_args(args) -> tuple[LMSpec, TrainConfig]:
    from bmojo.config import ConfigError

    file_run, file_model, file_train = ({}, {}, {})
    if args.config:
        file_run, file_model, file_train = read_config(args.config)
    if args.init:
        return _spec_from_init(args, file_run, file_model, file_train)
    args.recipe_vocab = file_run.pop("vocab_size", None)
    pick = {k: getattr(args, k) if getattr(args, k) is not None else file_run.get(k, getattr(LMSpec, k))
            for k in ("preset", "seq_len", "params")}
    spec = LMSpec(pick["preset"], pick["seq_len"], pick["params"], {**file_model, **model_overrides(args.model_opt)})
    if "vocab_size" in spec.model:
        raise ConfigError(f"--model-opt vocab_size={spec.model['vocab_size']}: a text run's vocabulary is its "
                          "tokenizer's (--tokenizer, --vocab-size); leave it out")
    try:
        tcfg = dataclass_from_args(TrainConfig, args, {**TRAIN_DEFAULTS, **file_train})
    except ConfigError as e:
        raise ConfigError(f"{args.config}: {e}" if args.config else str(e)) from None
    return spec, tcfg


def _spec_from_init(args, file_run: dict, file_model: dict, file_train: dict) -> tuple[LMSpec, TrainConfig]:
    """`--init CKPT`: the model is the checkpoint's, so options that choose a model are errors naming them."""
    from bmojo.config import ConfigError
    from bmojo.models import count_params
    from bmojo.train.lm import init_config, init_name

    chosen = [f"--{k.replace('_', '-')}" for k in ("preset", "params") if getattr(args, k) is not None]
    chosen += ["--model-opt"] * bool(args.model_opt) + [f"{args.config}: {k}" for k in ("preset", "params")
                                                         if k in file_run] + [f"{args.config}: model"] * bool(file_model)
    if chosen:
        raise ConfigError(f"--init {args.init}: the model is the checkpoint's; leave out {', '.join(chosen)}")
    seq_len = args.seq_len if args.seq_len is not None else file_run.get("seq_len", LMSpec.seq_len)
    cfg, meta = init_config(args.init, seq_len)
    try:
        tcfg = dataclass_from_args(TrainConfig, args, {**TRAIN_DEFAULTS, **file_train})
    except ConfigError as e:
        raise ConfigError(f"{args.config}: {e}" if args.config else str(e)) from None
    return LMSpec(init_name(meta), seq_len, count_params(cfg)), tcfg


def _spec_from_checkpoint(args, out: Path) -> tuple[LMSpec, TrainConfig, str]:
    """The run's settings as its checkpoint stores them; an option given on the command line that differs from
    them is an error naming it (only --steps may change)."""
    from bmojo.config import ConfigError
    from bmojo.train.checkpoint import has_checkpoint, read_meta

    ckpt = out / "checkpoint"
    if not has_checkpoint(ckpt):
        raise ConfigError(f"--resume: {out} holds no checkpoint to resume; leave out --resume to start a run there")
    if args.config or args.init:
        raise ConfigError(f"--resume takes every option from the checkpoint; leave out "
                          f"{'--config' if args.config else '--init'}")
    saved = read_meta(ckpt)
    if not {"lm", "train", "corpus"} <= set(saved):
        raise ConfigError(f"{ckpt}: not a checkpoint of `bmojo train` (no language-model settings)")
    lm, diffs = saved["lm"], []
    for k in ("preset", "seq_len", "params"):
        if getattr(args, k) is not None and getattr(args, k) != lm[k]:
            diffs.append(f"--{k.replace('_', '-')} {getattr(args, k)} (the run's: {lm[k]})")
    model = {k: v for k, v in model_overrides(args.model_opt).items() if saved["model"].get(k) != v}
    if model:
        diffs.append(f"--model-opt: the checkpoint's model differs in {sorted(model)}")
    tcfg = dataclass_from_args(TrainConfig, args, saved["train"])
    diffs += [f"--{k.replace('_', '-')} {v} (the run's: {saved['train'].get(k)})" for k, v in tcfg.to_dict().items()
              if k not in TrainConfig.MAY_CHANGE_ON_RESUME and saved["train"].get(k) != v]
    if diffs:
        raise ConfigError("--resume continues the run with its own options; these differ: " + "; ".join(diffs) +
                          ". Leave them out (only --steps may change), or start a new run with another --out")
    return LMSpec(**lm), tcfg, saved["corpus"]["folder"]


def _warnings(spec: LMSpec, tcfg: TrainConfig, vocab_size: int, init: str | None) -> list[str]:
    """Settings that run but are probably not what was meant (a size that cannot be built is an error)."""
    from bmojo.config import ConfigError
    from bmojo.models import count_params
    from bmojo.train.lm import model_config

    out = []
    if tcfg.warmup >= tcfg.steps:
        out.append(f"--warmup {tcfg.warmup} >= --steps {tcfg.steps}: the learning rate never reaches --lr")
    if init:  # the checkpoint's own model: no size was asked for
        return out
    n = count_params(model_config(spec, vocab_size))
    if not spec.params / 2 <= n <= 2 * spec.params:
        raise ConfigError(f"--params {spec.params:,}: the nearest {spec.preset} model of this shape has {n:,} "
                          "parameters (its embeddings and fixed layers set a floor); ask for a size within 2x of "
                          "what it can build, or change the shape with --model-opt")
    if abs(n - spec.params) > 0.25 * spec.params:
        out.append(f"--params {spec.params:,} gives {n:,} parameters: the nearest {spec.preset} model of this "
                   "shape (its embeddings and fixed layers set a floor)")
    return out


def dry_run(args, spec: LMSpec, tcfg: TrainConfig) -> int:
    """`--dry-run`: the plan of the run (bmojo.train.plan), from the settings alone."""
    import os

    from bmojo.config import ConfigError
    from bmojo.train.lm import init_config, model_config
    from bmojo.train.plan import describe, plan

    if args.resume:
        raise ConfigError("--dry-run plans a new run; leave out --resume")
    if args.init:
        cfg = init_config(args.init, spec.seq_len)[0]
        vocab = cfg.vocab_size
    else:
        vocab = getattr(args, "recipe_vocab", None) or (256 if args.tokenizer in (None, "byte") else args.vocab_size)
        cfg = model_config(spec, vocab)
    processes = args.processes or int(os.environ.get("WORLD_SIZE", 1))
    if processes < 1:
        raise ConfigError(f"--processes {processes}: must be >= 1")
    try:
        p = plan(cfg, tcfg, spec.seq_len, processes)
    except ValueError as e:
        raise ConfigError(f"--dry-run: {e}") from None
    name = f"{spec.preset} from {args.init}" if args.init else spec.preset
    print(describe(p, f"{name} (vocabulary {vocab:,}, context {spec.seq_len:,})", None if args.init else spec.params))
    print(json.dumps({"preset": spec.preset, "vocab_size": vocab, "seq_len": spec.seq_len, **p}))
    return 0


def _check_run_args(args):
    from bmojo.config import ConfigError

    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite: choose one (continue the run, or replace it)")
    if args.resume and args.out is None:
        raise ConfigError("--resume: name the run folder with --out")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: is a file; name a run folder")


def _run_corpus(args, folder, d):
    """The corpus to train on: the run's own when resuming (a --corpus given must be the same one), else the one
    named, prepared by rank 0 while the other ranks wait."""
    from bmojo.config import ConfigError
    from bmojo.data.text.corpus import DEFAULT_ROOT, TokenCorpus

    main = d is None or d.main
    if not main:
        d.barrier()  # rank 0 prepares the corpus (first use) while the others wait
    def named():
        return open_corpus(args.corpus, tokenizer=args.tokenizer or "byte", vocab_size=args.vocab_size,
                           root=args.data, text_field=args.text_field)

    if not args.resume:
        corpus = named()
    else:
        corpus = TokenCorpus(folder)
        if args.corpus != "stdlib" or args.tokenizer is not None or args.data != DEFAULT_ROOT:
            given = named()
            if given.folder.resolve() != corpus.folder.resolve():
                raise ConfigError(f"--resume: the run was trained on {corpus.folder}, not {given.folder}; "
                                  "leave out --corpus")
    if d is not None and main:
        d.barrier()
    return corpus


def _announce(args, spec, tcfg, corpus, out, d):
    if not args.resume:
        for w in _warnings(spec, tcfg, corpus.tokenizer.vocab_size, args.init):
            print(f"train: warning: {w}", file=sys.stderr, flush=True)
        sized = getattr(args, "recipe_vocab", None)
        if sized and sized != corpus.tokenizer.vocab_size:
            print(f"train: warning: {args.config} was sized for a vocabulary of {sized:,}; this tokenizer has "
                  f"{corpus.tokenizer.vocab_size:,}, so the parameter count differs from the recipe's",
                  file=sys.stderr, flush=True)
    start = f" from {args.init}" if args.init else ""
    print(f"train: {spec.preset}{start} on {corpus.folder} ({corpus.summary()}), {tcfg.steps} steps of "
          f"{tcfg.batch_size}x{spec.seq_len} tokens -> {out}" + (f", {d.world} processes ({d.mode})" if d else ""),
          flush=True)


def _report(spec, model, res, out) -> None:
    if res.already_done:
        ppl = res.eval.get("ppl")
        print(f"{out}: the run already finished at step {res.steps}" +
              (f" (validation perplexity {ppl:.3f})" if ppl is not None else "") +
              "; nothing changed. Pass a larger --steps to train it further")
        return
    summary = {"preset": spec.preset, "params": model.num_params(), "steps": res.steps,
               "train_seconds": res.train_seconds, "val_loss": res.eval.get("loss"), "val_ppl": res.eval.get("ppl"),
               "checkpoint": res.checkpoint}
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    print(f"{spec.preset} ({model.num_params():,} params): validation perplexity {res.eval.get('ppl', float('nan')):.3f}"
          f" after {res.steps} steps ({res.train_seconds:.0f}s); checkpoint {res.checkpoint}")


def run(args) -> int:
    from bmojo.train.loop import TrainingInterrupted

    _check_run_args(args)
    if args.resume:
        spec, tcfg, folder = _spec_from_checkpoint(args, Path(args.out))
    else:
        (spec, tcfg), folder = _spec_from_args(args), None
    if args.dry_run:
        return dry_run(args, spec, tcfg)
    if args.init and args.tokenizer is None:  # the corpus is tokenized as the checkpoint it starts from was
        from bmojo.train.checkpoint import lm_tokenizer, read_meta

        args.tokenizer = lm_tokenizer(read_meta(args.init))[1]
    d = dist.setup(tcfg.parallel, tcfg.batch_size)  # under torchrun: the process group, before any file is touched
    main = d is None or d.main
    corpus = _run_corpus(args, folder, d)
    out = Path(args.out or f"runs/train/{corpus.manifest['corpus']}-{spec.preset}")
    if main:
        _announce(args, spec, tcfg, corpus, out, d)
    try:
        model, res = train_lm(spec, corpus, tcfg, out, resume=args.resume, overwrite=args.overwrite, init=args.init)
    except TrainingInterrupted as e:
        if e.checkpoint:
            e.args = (f"{e}. Resume with: bmojo train --resume --out {out}",)
        raise
    if main:
        _report(spec, model, res, out)
    return 0
