"""`bmojo eval ppl`: perplexity and bits per byte of a checkpoint on a corpus split, at one or several context
lengths.

--factors 1,2,4,8,16 (the default) scores the checkpoint at those multiples of its training length over the same
test tokens, taken from documents at least 16x the training length long; contexts longer than --segment are
streamed through the recurrent mode.  With --storage DIR every window also gets a fresh long-term store in DIR
(tokens evicted from the eidetic memory, retrieved by later queries): DIR must be new or empty, since it is
cleared for every window (--overwrite-storage to reuse a store folder).  Writes eval.json and a
plot of loss against token position."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from bmojo.cli.common import number_list
from bmojo.config import ConfigError
from bmojo.cli.memory import add_store_args, open_store
from bmojo.data.text.corpus import DEFAULT_ROOT, open_corpus
from bmojo.eval.jobs import render_table
from bmojo.eval.ppl import eval_regions, length_eval, plot_position_loss
from bmojo.memory import clear, store_files
from bmojo.data.text.tokenizer import describe_tokenizer, same_tokens
from bmojo.train.checkpoint import lm_tokenizer, load_lm_checkpoint
from bmojo.train.lm import init_name


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (perplexity, length generalisation, lm-eval tasks)", description=__doc__)
    esub = p.add_subparsers(dest="eval_command", metavar="METRIC", required=True)
    q = esub.add_parser("ppl", help="perplexity and bits per byte at 1x..16x the training length",
                        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--checkpoint", required=True, help="a checkpoint folder written by `bmojo train` or `bmojo "
                   "convert`")
    q.add_argument("--corpus", default=None, help="a prepared corpus folder tokenized with the checkpoint's tokenizer, "
                   "or text (a file or folder, JSONL, Parquet) to prepare with it under --data; if not given, the one "
                   "it was trained on (a converted checkpoint records none)")
    q.add_argument("--data", default=DEFAULT_ROOT, help="root folder of prepared corpora, for a --corpus to prepare")
    q.add_argument("--train-len", type=int, default=None, help="the length --factors multiply; if not given, the "
                   "training length the checkpoint records (a converted checkpoint records none)")
    q.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="which split of the corpus to score (documents are split by name, never shared)")
    q.add_argument("--factors", default="1,2,4,8,16", help="context lengths as multiples of the training length")
    q.add_argument("--context", type=int, default=None, help="one context length in tokens instead of --factors")
    q.add_argument("--regions", type=int, default=16, help="evaluation regions (of the longest context) to score")
    q.add_argument("--segment", type=int, default=4096, help="stream contexts longer than this many tokens")
    q.add_argument("--out", default=None, help="folder for eval.json and the plot; if not given, CHECKPOINT/../eval")
    add_store_args(q)
    q.add_argument("--overwrite-storage", action="store_true", help="let --storage name an existing store, which "
                   "is deleted (eval ppl clears it for every window)")
    q.set_defaults(func=run_ppl)
    h = esub.add_parser("harness", help="lm-evaluation-harness tasks on a checkpoint (the `eval` extra)",
                        description="Runs lm-evaluation-harness tasks on a bmojo checkpoint through lm-eval's HF "
                        "model type (bmojo.hf.harness); prints lm-eval's table and writes its results as JSON.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    h.add_argument("--checkpoint", required=True, help="a checkpoint folder with a tokenizer (`bmojo train`)")
    h.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    h.add_argument("--include-path", default=None, help="a folder of your own task YAML files")
    h.add_argument("--limit", type=float, default=None, help="documents per task (a fraction if < 1)")
    h.add_argument("--num-fewshot", type=int, default=None,
                   help="examples put before each question; if not given, each task's own default")
    h.add_argument("--batch-size", type=int, default=1, help="requests per forward (generation tasks need 1)")
    h.add_argument("--out", default=None, help="results JSON; if not given, CHECKPOINT/../harness.json")
    h.set_defaults(func=run_harness)


def run_harness(args) -> int:
    try:
        from lm_eval.utils import make_table

        from bmojo.hf.harness import evaluate
    except ImportError as e:
        raise ConfigError(f"bmojo eval harness needs lm-eval and transformers: pip install 'bmojo[eval]' ({e})") \
            from None
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks:
        raise ConfigError("--tasks: give at least one task name")
    if args.include_path is not None and not Path(args.include_path).is_dir():
        raise ConfigError(f"--include-path {args.include_path}: not a folder")
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    load_lm_checkpoint(args.checkpoint)  # a checkpoint without a tokenizer, or damaged: said before lm-eval starts
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "harness.json"
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; name the results JSON file")
    try:
        res = evaluate(args.checkpoint, tasks, include_path=args.include_path, limit=limit,
                       num_fewshot=args.num_fewshot, batch_size=args.batch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(make_table(res))
    out.write_text(json.dumps({k: res[k] for k in ("results", "versions", "n-shot", "config") if k in res},
                              indent=1, default=str))
    print(f"wrote {out}")
    return 0


def _check_ppl_args(args) -> list:
    """Every flag of `eval ppl` checked before the checkpoint is read -> the factors."""
    factors = number_list(args.factors, int, "--factors", lambda v: v >= 1, "integers >= 1 (multiples of the "
                          "training length)")
    for flag, v in (("--context", args.context), ("--segment", args.segment), ("--regions", args.regions),
                    ("--train-len", args.train_len)):
        if v is not None and v < 1:
            raise ConfigError(f"{flag}={v}: must be a positive integer")
    if not factors and args.context is None:
        raise ConfigError("--factors: give at least one factor (or --context)")
    out_arg = Path(args.out) if args.out else None
    if out_arg is not None and out_arg.exists() and not out_arg.is_dir():
        raise ConfigError(f"--out {out_arg}: is a file; name a folder for eval.json and the plot")
    if args.storage and Path(args.storage).is_dir() and store_files(Path(args.storage))[1]:
        other = ", ".join(p.name for p in store_files(Path(args.storage))[1])
        raise ConfigError(f"--storage {args.storage}: holds files that are not the store's ({other}); eval ppl "
                          "replaces its store for every window, so it needs a folder of its own")
    if args.storage and Path(args.storage).exists() and any(Path(args.storage).iterdir()) \
            and not args.overwrite_storage:
        raise ConfigError(f"--storage {args.storage}: the folder is not empty (a store `generate` built, with its "
                          "session?); eval ppl clears its store for every window, so name a new folder, or pass "
                          "--overwrite-storage to delete that store")
    return factors


def _ppl_corpus(args, meta, tok):
    """The corpus to score: the one named, or the one the checkpoint was trained on, tokenized as it was."""
    trained = meta.get("corpus", {}).get("folder")
    if args.corpus is None and trained is None:
        raise ConfigError(f"{args.checkpoint}: the checkpoint records no corpus it was trained on (`bmojo demo` and "
                          "`bmojo convert` write none); name one with --corpus")
    corpus = open_corpus(args.corpus or trained, tokenizer=lm_tokenizer(meta)[1], root=args.data)
    if trained is not None and Path(corpus.folder).resolve() == Path(trained).resolve():  # the run's own corpus
        corpus.check_digest(meta["corpus"].get("digest"), f"the checkpoint {args.checkpoint}")
    if not same_tokens(corpus.tokenizer, tok):
        raise ConfigError(f"{corpus.folder}: tokenized with {describe_tokenizer(corpus.tokenizer)}, the checkpoint "
                          f"with {describe_tokenizer(tok)}; prepare the text with --tokenizer {lm_tokenizer(meta)[1]}")
    return corpus


def run_ppl(args) -> int:
    factors = _check_ppl_args(args)
    model, meta, tok = load_lm_checkpoint(args.checkpoint)
    corpus = _ppl_corpus(args, meta, tok)
    T = args.train_len or (meta.get("lm") or {}).get("seq_len")
    if T is None and args.context is None:
        raise ConfigError(f"{args.checkpoint}: the checkpoint records no training length (`bmojo demo` and `bmojo "
                          "convert` write none); give the length --factors multiply with --train-len, or one --context")
    name = init_name(meta)
    lengths = [args.context] if args.context is not None else [T * k for k in factors]
    span = math.lcm(*lengths)
    regions = eval_regions(corpus.split_documents(args.split), span, args.regions)
    print(f"eval ppl: {name} ({f'trained at {T} tokens' if T else 'training length not recorded'}) on {corpus.folder} {args.split}: "
          f"{len(regions)} regions of {span} tokens, contexts {lengths}", flush=True)

    def progress(L, done, total):
        sys.stderr.write(f"\r  context {L}: {done}/{total} windows")
        sys.stderr.write("\n" if done == total else "")
        sys.stderr.flush()

    def fresh_store(rows):  # every window reads from its own long-term store, made in --storage
        clear(args.storage)
        return open_store(args, model, rows)

    res = length_eval(model, regions, lengths, corpus.tokenizer.token_bytes(), segment=args.segment, progress=progress,
                      open_store=fresh_store if args.storage else None)
    rows = [[str(L), f"{L / T:g}x" if T else "-", f"{r['loss']:.4f}", f"{r['ppl']:.3f}", f"{r['bpb']:.4f}", str(r["windows"])]
            for L, r in res.items()]
    print(render_table(["context", "x train", "loss", "ppl", "bits/byte", "windows"], rows))
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"checkpoint": str(args.checkpoint), "corpus": str(corpus.folder), "split": args.split,
               "train_len": T, "regions": len(regions), "storage": args.storage,
               "results": {str(L): r for L, r in res.items()}}
    (out / "eval.json").write_text(json.dumps(summary))
    png = plot_position_loss({f"context {L}": r["per_position"] for L, r in res.items()}, T, out / "position_loss.png",
                             f"{name} on {corpus.manifest['corpus']} ({args.split})")
    print(f"wrote {out / 'eval.json'}" + (f" and {png}" if png else ""))
    return 0
