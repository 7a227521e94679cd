"""`bmojo train`: train a preset on a text corpus (packed sequences, validation perplexity, checkpoints).

The corpus is prepared on first use (see `bmojo data prepare`).  The run folder gets metrics.jsonl and a
checkpoint (safetensors + JSON + the tokenizer) that `bmojo eval ppl` and `bmojo generate` read; `--resume`
continues an interrupted run from its last checkpoint (use --save-every to checkpoint during training)."""
from __future__ import annotations

import json
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
    add_dataclass_args(p, TrainConfig, skip=("target_acc",), defaults=TRAIN_DEFAULTS)
    p.set_defaults(func=run)


def run(args) -> int:
    spec = LMSpec(args.preset, args.seq_len, args.params, model_overrides(args.model_opt))
    tcfg = dataclass_from_args(TrainConfig, args, TRAIN_DEFAULTS)
    d = dist.setup(tcfg.parallel, tcfg.batch_size)  # under torchrun: the process group, before any file is touched
    main = d is None or d.main
    if not main:
        d.barrier()  # rank 0 prepares the corpus (first use) while the others wait
    corpus = open_corpus(args.corpus, tokenizer=args.tokenizer, vocab_size=args.vocab_size, root=args.data)
    if d is not None and main:
        d.barrier()
    out = Path(args.out or f"runs/train/{corpus.manifest['corpus']}-{args.preset}")
    if main:
        print(f"train: {args.preset} on {corpus.folder} ({corpus.summary()}), {tcfg.steps} steps of "
              f"{tcfg.batch_size}x{spec.seq_len} tokens -> {out}" + (f", {d.world} processes ({d.mode})" if d else ""),
              flush=True)
    model, res = train_lm(spec, corpus, tcfg, out, resume=args.resume)
    if not main:
        return 0
    summary = {"preset": args.preset, "params": model.num_params(), "steps": res.steps,
               "train_seconds": res.train_seconds, "val_loss": res.eval.get("loss"), "val_ppl": res.eval.get("ppl"),
               "checkpoint": res.checkpoint}
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    print(f"{args.preset} ({model.num_params():,} params): validation perplexity {res.eval.get('ppl', float('nan')):.3f}"
          f" after {res.steps} steps ({res.train_seconds:.0f}s); checkpoint {res.checkpoint}")
    return 0
