"""`bmojo inspect`: what each B'MOJO layer of a checkpoint did with a text.

Writes OUT/inspect.html (self-contained: no network), OUT/inspect.png and OUT/inspect.json. For every layer
they show each token's innovation score, the tokens that entered the eidetic memory and those that went on to the
long-term store, and, for every query, the share of its attention that went to the raw window, the fading tokens,
the eidetic tokens and the store (a scratch store is attached for the read)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="HTML + PNG of memory choices and attention shares on a text",
                       description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint with a tokenizer (`bmojo train`)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to read")
    src.add_argument("--file", help="a UTF-8 text file to read")
    p.add_argument("--max-tokens", type=int, default=2048, help="read at most this many tokens of the text")
    p.add_argument("--out", default=None, help="output folder; if not given, CHECKPOINT/../inspect")
    p.set_defaults(func=run)


def run(args) -> int:
    from bmojo.config import ConfigError
    from bmojo.eval.inspect import report, write_html, write_png
    from bmojo.train.checkpoint import load_lm_checkpoint

    if args.max_tokens < 1:
        raise ConfigError(f"--max-tokens={args.max_tokens}: must be >= 1")
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
    try:
        rep = report(model, ids, [tok.decode([int(i)]) for i in ids])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    (out / "inspect.json").write_text(json.dumps(rep))
    files = [write_html(rep, out / "inspect.html", title=str(args.checkpoint)), write_png(rep, out / "inspect.png")]
    for L in rep["layers"]:
        mean = {k: sum(v) / len(v) for k, v in L["shares"].items()}
        print(f"layer {L['index']} ({L['kind']}): {sum(L['in_memory'])} tokens entered memory, "
              f"{sum(L['in_store'])} went to the store; attention share "
              + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    print("wrote " + ", ".join(str(f) for f in files) + f", {out / 'inspect.json'}")
    return 0
