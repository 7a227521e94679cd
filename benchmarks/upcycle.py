"""How close an upcycled B'MOJO model starts to its source, and where a short fine-tune takes it.

    python benchmarks/upcycle.py [--runs benchmarks/results/lm_compare/runs] [--steps 200]

Sources are the `transformer` and `mamba` checkpoints that `python benchmarks/lm_compare.py` trains on the
stdlib corpus (byte-level, ~1M parameters, 800 steps at T=128). Each is upcycled into `bmojo-f` and `bmojo`
(`bmojo.models.upcycle`, window 64, chunk 32, memory 32: lm_compare's B'MOJO settings). Then for each model
it reports the test loss (nats/token), from a fresh state per window, at 128 and 512 tokens:
- the source;
- the upcycled model before any training;
- the upcycled model after `--steps` fine-tuning steps (batch 16, T=128);
- the same preset trained from scratch by lm_compare, for 800 steps.

Writes benchmarks/results/upcycle/results.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bmojo.data.text.corpus import open_corpus
from bmojo.eval.jobs import render_table
from bmojo.models.upcycle import upcycle
from bmojo.train.checkpoint import load_checkpoint
from bmojo.train.config import TrainConfig
from bmojo.train.lm import fixed_windows, packed_batches
from bmojo.train.loop import train
from bmojo.utils.runtime import machine, tune_cpu_allocator

LENGTHS = (128, 512)
UPCYCLE = dict(window=64, chunk=32, memory_size=32)


@torch.no_grad()
def test_loss(model, tokens, seq_len: int, n_windows: int = 64) -> float:
    model.eval()
    total, n = 0.0, 0
    for x, y in fixed_windows(tokens, n_windows // 16, 16, seq_len):
        logits = model(x).logits
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").item()
        n += y.numel()
    return total / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="benchmarks/results/lm_compare/runs", help="lm_compare's run folders")
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps of each upcycled model")
    ap.add_argument("--out", default="benchmarks/results/upcycle")
    args = ap.parse_args()
    tune_cpu_allocator()
    runs = Path(args.runs)
    need = [runs / f"stdlib-{p}" / "checkpoint" for p in ("transformer", "mamba", "bmojo-f", "bmojo")]
    missing = [str(p) for p in need if not p.is_dir()]
    if missing:
        raise SystemExit(f"missing checkpoints {missing}: run `python benchmarks/lm_compare.py` first")
    corpus = open_corpus("stdlib")
    test, train_tokens = corpus.tokens("test"), corpus.tokens("train")

    def losses(model):
        return {L: test_loss(model, test, L) for L in LENGTHS}

    rows, t0 = [], time.perf_counter()
    scratch = {p: losses(load_checkpoint(runs / f"stdlib-{p}" / "checkpoint")[0]) for p in ("bmojo-f", "bmojo")}
    for source in ("transformer", "mamba"):
        src, _ = load_checkpoint(runs / f"stdlib-{source}" / "checkpoint")
        src_loss = losses(src)
        for target in ("bmojo-f", "bmojo"):
            extra = {"n_heads": 4} if source == "mamba" else {}
            model = upcycle(src, target, **UPCYCLE, **extra)
            start = losses(model)
            tcfg = TrainConfig(steps=args.steps, batch_size=16, lr=1e-3, warmup=20, eval_every=0, progress=False)
            train(model, tcfg, packed_batches(train_tokens, 16, 128, seed=1), desc=f"{source}->{target}")
            tuned = losses(model)
            row = {"source": source, "target": target, "params": model.num_params(), "source_loss": src_loss,
                   "upcycled_start": start, "upcycled_tuned": tuned, "scratch_800_steps": scratch[target]}
            rows.append(row)
            print(f"{source:11s} -> {target:7s}: " + ", ".join(
                f"T={L}: source {src_loss[L]:.3f}, start {start[L]:.3f}, tuned {tuned[L]:.3f}, "
                f"scratch {scratch[target][L]:.3f}" for L in LENGTHS), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "steps": args.steps, "upcycle": UPCYCLE, "lengths": list(LENGTHS),
              "wall_seconds": time.perf_counter() - t0, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    table = [[r["source"], r["target"]] + [f"{r[k][L]:.3f}" for L in LENGTHS for k in
             ("source_loss", "upcycled_start", "upcycled_tuned", "scratch_800_steps")] for r in rows]
    heads = ["source", "target"] + [f"{k} T={L}" for L in LENGTHS for k in ("source", "start", "tuned", "scratch")]
    print(render_table(heads, table))
    print(f"wrote {out / 'results.json'} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
