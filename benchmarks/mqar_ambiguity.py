"""How much of the main job's task a reader that ignores position can solve, per evaluated length.

MQAR's filler is uniform over the whole vocabulary, so a queried key also occurs in the filler, and when the token
after it is from the value range that bigram looks exactly like a pair.  A reader that finds "the token after this
key" by content alone (a store searched by q.k, eidetic keys read at the window's edge, a Transformer at RoPE
distances it never saw) cannot tell those from the pair; picking one of the candidates at random it scores
mean(1 / (1 + spurious)).  A reader that keeps only the pairs (a perfect eidetic selection) or that knows the
pairs come first is not bounded by this.

    python benchmarks/mqar_ambiguity.py [--factors 1,4,16] [--examples 256] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from bmojo.cli.compare import DEFAULT_TASK
from bmojo.data.synthetic import make_task


def spurious_pairs(x: np.ndarray, y: np.ndarray, pairs: int, vocab: int) -> np.ndarray:
    """Per query: how many (key, value-range token) bigrams in the filler before it repeat its pair's shape."""
    out = []
    for b in range(x.shape[0]):
        for q in np.flatnonzero(y[b] != -100):
            j = np.flatnonzero(x[b, 2 * pairs:q - 1] == x[b, q]) + 2 * pairs
            out.append(int((x[b, j + 1] >= vocab // 2).sum()))
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--factors", default="1,4,16", help="lengths as multiples of the main job's seq_len")
    ap.add_argument("--examples", type=int, default=256, help="sequences per length")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    a = ap.parse_args()
    rows = []
    for k in (int(f) for f in a.factors.split(",")):
        opts = {**DEFAULT_TASK, "seq_len": DEFAULT_TASK["seq_len"] * k, "query_start": DEFAULT_TASK["query_start"] * k}
        _, gen = make_task("mqar", **opts)
        x, y = gen(a.examples, np.random.default_rng(0))
        s = spurious_pairs(x, y, opts["num_kv_pairs"], opts["vocab_size"])
        rows.append({"factor": k, "seq_len": opts["seq_len"], "mean_spurious": float(s.mean()),
                     "share_unambiguous": float((s == 0).mean()), "content_only_ceiling": float((1 / (1 + s)).mean())})
        print(f"{k:>3}x ({opts['seq_len']} tokens): {s.mean():.2f} look-alike pairs per query, "
              f"{(s == 0).mean():.2f} of queries have none; a content-only reader's ceiling "
              f"{(1 / (1 + s)).mean():.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
