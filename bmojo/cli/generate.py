"""`bmojo generate`: continue a prompt with a trained checkpoint, streaming the text as it is produced.

With --storage DIR, tokens that leave a B'MOJO layer's eidetic memory go to a long-term store in DIR and are
retrieved by later queries; the decode state is saved there at the end, so the next call with the same DIR
continues the same stream (its prompt follows the text of the earlier calls).  `bmojo memory info DIR` shows
its size, `bmojo memory clear DIR` forgets it."""
from __future__ import annotations

import argparse
import sys

import torch

from bmojo.config import ConfigError
from bmojo.cli.memory import add_store_args, report_recovery, store_config
from bmojo.inference import compile_step, generate
from bmojo.inference.sampling import check_sampling
from bmojo.memory.session import check_session, load_session, save_session
from bmojo.memory.store import Store
from bmojo.train.checkpoint import load_lm_checkpoint
from bmojo.utils.interrupt import StopOnCtrlC


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a checkpoint (streamed)", description=__doc__,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder written by `bmojo train` or `bmojo demo`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text to continue")
    src.add_argument("--prompt-file", metavar="FILE", help="read the text to continue from FILE (UTF-8; - = stdin): "
                     "for prompts too long for the command line")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--compile", action="store_true",
                   help="run the decode step under torch.compile (bmojo.inference.compile_step): faster per token, "
                   "after a compile of seconds to minutes on a CPU; not with --storage")
    add_store_args(p)
    p.set_defaults(func=run)


def read_prompt(args) -> str:
    """The prompt text from --prompt or --prompt-file; a non-empty text or a clear error."""
    if args.prompt_file is None:
        text, where = args.prompt, "--prompt"
    else:
        where = f"--prompt-file {args.prompt_file}"
        try:
            text = sys.stdin.read() if args.prompt_file == "-" else open(args.prompt_file, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{where}: cannot read it as UTF-8 text ({e})") from None
    if not text:
        raise ConfigError(f"{where}: the prompt must not be empty")
    return text


class StreamDecoder:
    """Writes the text of a growing token list as soon as it decodes to whole characters."""

    def __init__(self, tok, prompt_ids: list[int], out=None):
        self.tok, self.ids, self.out = tok, list(prompt_ids), out or sys.stdout  # stdout as it is now
        self.written = len(tok.decode(self.ids))
        self.start = len(self.ids)

    def push(self, token: int) -> None:
        self.ids.append(int(token))
        text = self.tok.decode(self.ids)
        stable = len(text.rstrip("\ufffd"))  # a character still being spelled out byte by byte
        if stable > self.written:
            self.out.write(text[self.written:stable])
            self.out.flush()
            self.written = stable

    def finish(self) -> str:
        text = self.tok.decode(self.ids)
        self.out.write(text[self.written:] + "\n")
        self.out.flush()
        return self.tok.decode(self.ids[self.start:])


def _check_args(args) -> None:
    """Every option checked before the checkpoint is read or a byte is written."""
    try:
        check_sampling(args.temperature, args.top_k, args.top_p)
    except ValueError as e:
        name = str(e).split()[0]
        raise ConfigError(f"--{name.replace('_', '-')}: {e}") from None
    if args.max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens={args.max_new_tokens}: must be >= 0")
    if args.compile and args.storage:
        raise ConfigError("--compile with --storage: the long-term store's reads and writes are not compiled; "
                          "drop one of them")


def _open_session(args, model, weights):
    """With --storage: the store and the session state it holds (None, None without)."""
    if not args.storage:
        return None, None
    check_session(args.storage, model, weights)  # another model's session: refused before the store is touched
    store = Store.for_model(args.storage, model, rows=1, cfg=store_config(args))
    state = load_session(store, model, weights=weights)
    report_recovery(store)  # what an unfinished earlier call left is reported, with where it was kept
    if state.pos:
        print(f"[continuing the session in {args.storage} after {state.pos} tokens]", file=sys.stderr)
    return store, state


def run(args) -> int:
    _check_args(args)
    prompt = read_prompt(args)
    model, meta, tok = load_lm_checkpoint(args.checkpoint)
    ids = tok.encode(prompt).tolist()
    weights = meta["weights_sha256"]
    store, state = _open_session(args, model, weights)
    stream = StreamDecoder(tok, ids)
    sys.stdout.write(prompt)
    step = None
    if args.compile:
        print("[compiling the decode step: the first tokens wait for it]", file=sys.stderr)
        step = compile_step(model)
    try:
        with StopOnCtrlC(True, "ending after this token" + (" and saving the session" if store is not None else "")) \
                as ctrl_c:  # a first Ctrl-C ends generation after the current token
            _, state = generate(model, torch.tensor([ids]), args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                callback=lambda t: stream.push(t[0]) or ctrl_c.requested,
                                state=state, return_state=True, step=step)
        stream.finish()
        if store is not None:
            save_session(store, state, weights)
            info = store.info()
            print(f"[store {args.storage}: {sum(info['entries'].values())} entries, {info['disk_bytes'] / 2**20:.2f} "
                  f"MiB on disk, index {info['index_bytes'] / 2**20:.2f} MiB in RAM; session at {state.pos} tokens]",
                  file=sys.stderr)
    finally:
        if store is not None:
            store.close()
    if ctrl_c.requested:
        print(f"[stopped by Ctrl-C after {len(stream.ids) - stream.start} new tokens"
              + ("; the session is saved and the next call continues it]" if store is not None else "]"),
              file=sys.stderr)
        return 130
    return 0
