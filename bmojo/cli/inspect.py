"""`bmojo inspect`: what each B'MOJO layer of a checkpoint did with a text.

Writes OUT/inspect.html (self-contained: no network), OUT/inspect.png and OUT/inspect.json. For every layer
they show each token's innovation score, the tokens that entered the eidetic memory and those that went on to the
long-term store, and, for every query, the share of its attention that went to the raw window, the fading tokens,
the eidetic tokens and, with --with-store, a long-term store (a scratch one is attached for the read; without it
the model runs as it is, with no store).

A checkpoint trained on a synthetic task (`bmojo compare`) is read on one sequence of that
task (`--example SEED`): tokens are labelled by role (mqar: K/V pairs, ? queries, . filler) and the summary says how
many of the tokens the task needs the memory kept."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="HTML + PNG of memory choices and attention shares on a text",
                       description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint: with a tokenizer (read --text or --file) or "
                   "trained on a synthetic task (read --example)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--example", type=int, metavar="SEED", help="read one sequence of the checkpoint's task")
    src.add_argument("--text", help="the text to read")
    src.add_argument("--file", help="a UTF-8 text file to read")
    p.add_argument("--max-tokens", type=int, default=2048, help="read at most this many tokens of the text")
    p.add_argument("--with-store", action="store_true", help="attach a scratch long-term store, as `generate "
                   "--storage` does, and show what went to it and what was read back")
    p.add_argument("--out", default=None, help="output folder; if not given, CHECKPOINT/../inspect")
    p.set_defaults(func=run)


def run(args) -> int:
    from bmojo.config import ConfigError
    from bmojo.eval.inspect import task_example
    from bmojo.train.checkpoint import load_checkpoint, load_lm_checkpoint

    if args.max_tokens < 1:
        raise ConfigError(f"--max-tokens={args.max_tokens}: must be >= 1")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: is a file; name a folder for inspect.html, .png and .json")
    if args.example is not None:
        model, meta = load_checkpoint(args.checkpoint)
        if "task" not in meta:
            raise ConfigError(f"{args.checkpoint}: the checkpoint names no synthetic task; read --text or --file")
        ids, texts, keep = task_example(meta["task"], meta.get("task_options", {}), args.example)
        return _write(args, model, ids, texts, keep)
    model, _, tok = load_lm_checkpoint(args.checkpoint)
    if args.file is not None:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--file {args.file}: cannot read it as UTF-8 text ({e})") from None
    else:
        text = args.text
    ids = torch.as_tensor(tok.encode(text)[:args.max_tokens], dtype=torch.long)
    if ids.numel() == 0:
        raise ConfigError("the text is empty")
    if ids.numel() > model.cfg.max_seq_len:
        raise ConfigError(f"{ids.numel()} tokens exceed the model's max_seq_len {model.cfg.max_seq_len}; "
                          "lower --max-tokens")
    return _write(args, model, ids, [tok.decode([int(i)]) for i in ids])


def _write(args, model, ids, texts, keep=None) -> int:
    from bmojo.config import ConfigError
    from bmojo.eval.inspect import kept_summary, report, write_html, write_png

    try:
        rep = report(model, ids, texts, with_store=args.with_store)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if keep is not None:
        rep["task_keep"] = keep
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    (out / "inspect.json").write_text(json.dumps(rep))
    files = [write_html(rep, out / "inspect.html", title=str(args.checkpoint)), write_png(rep, out / "inspect.png")]
    for L in rep["layers"]:
        mean = {k: sum(v) / len(v) for k, v in L["shares"].items()}
        print(f"layer {L['index']} ({L['kind']}): {sum(L['in_memory'])} tokens entered memory, "
              f"{sum(L['in_store'])} went to the store; attention share "
              + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    if keep is not None:
        print("\n".join(kept_summary(rep, keep)))
    print("wrote " + ", ".join(str(f) for f in files) + f", {out / 'inspect.json'}")
    return 0
