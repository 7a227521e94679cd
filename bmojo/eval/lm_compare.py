"""Train the model family on real text on equal terms, and compare perplexity at and beyond the training length.

Every model gets the same corpus, tokenizer, batches (same seed), schedule and step count, at a parameter count
matched by `size_to_params`.  Each is then scored on the test split at 1x..16x its training length over the same
target tokens (see `bmojo.eval.ppl`).  Results: JSON, a table, and a PNG of loss against token position.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bmojo.data.text.corpus import TokenCorpus
from bmojo.eval.compare import render_table, run_jobs
from bmojo.eval.ppl import binned, eval_regions, length_eval, plot_position_loss
from bmojo.train.config import TrainConfig
from bmojo.train.lm import LMSpec, train_lm
from bmojo.utils.runtime import machine

PRESETS = ["transformer", "swa", "mamba", "hybrid", "bmojo-f", "bmojo"]


@dataclass
class LMCompareSpec:
    corpora: dict[str, str]  # corpus label -> prepared corpus folder
    presets: list[str] = field(default_factory=lambda: list(PRESETS))
    seq_len: int = 128
    params: int = 1_000_000
    model: dict = field(default_factory=dict)
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 50
    eval_every: int = 100
    eval_batches: int = 4
    factors: tuple[int, ...] = (1, 2, 4, 8, 16)
    regions: int = 16
    seed: int = 0
    workers: int = 2
    out: str = "runs/lm_compare"


def _one_run(args) -> dict:
    spec, corpus_label, preset = args
    torch.set_num_threads(1)
    from bmojo.utils.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    corpus = TokenCorpus(spec.corpora[corpus_label])
    lm = LMSpec(preset, spec.seq_len, spec.params, spec.model)
    tcfg = TrainConfig(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, warmup=spec.warmup,
                       eval_every=spec.eval_every, eval_batches=spec.eval_batches, seed=spec.seed, progress=False)
    model, res = train_lm(lm, corpus, tcfg, Path(spec.out) / "runs" / f"{corpus_label}-{preset}")
    span = spec.seq_len * max(spec.factors)
    regions = eval_regions(corpus.split_documents("test"), span, spec.regions)
    t0 = time.perf_counter()
    ev = length_eval(model, regions, [spec.seq_len * k for k in spec.factors], corpus.tokenizer.token_bytes())
    row = {"corpus": corpus_label, "preset": preset, "params": model.num_params(), "d_model": model.cfg.d_model,
           "state_bytes": model.state_bytes(spec.seq_len), "steps": res.steps, "train_seconds": res.train_seconds,
           "tokens": res.steps * spec.batch_size * spec.seq_len, "eval_seconds": time.perf_counter() - t0,
           "val_ppl": res.eval.get("ppl"), "regions": len(regions), "model": model.cfg.to_dict(),
           "curve": [[h["step"], h["eval_ppl"]] for h in res.history if "eval_ppl" in h]}
    for k in spec.factors:
        e = ev[spec.seq_len * k]
        row[f"x{k}"] = {key: e[key] for key in ("loss", "ppl", "bpb", "windows", "tokens")}
    # loss against position at the longest context, in 64 bins (the full curve is 16 x seq_len numbers)
    centres, means = binned(ev[span]["per_position"], 64)
    row["position_loss"] = [centres.tolist(), means.tolist()]
    return row


def run_lm_compare(spec: LMCompareSpec, log=print) -> dict:
    jobs = [(spec, c, p) for c in spec.corpora for p in spec.presets]
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"lm_compare: {len(spec.presets)} models x {len(spec.corpora)} corpora, {spec.steps} steps of "
        f"{spec.batch_size}x{spec.seq_len} tokens, ~{spec.params:,} params, {spec.workers} worker(s)")
    t0 = time.perf_counter()
    rows = run_jobs(_one_run, jobs, spec.workers, log, lambda r: f"{r['corpus']} {r['preset']}: " + ", ".join(
        f"ppl x{k} {r[f'x{k}']['ppl']:.3f}" for k in spec.factors))
    order = {(c, p): i for i, (_, c, p) in enumerate(jobs)}
    rows.sort(key=lambda r: order[(r["corpus"], r["preset"])])
    results = {"spec": asdict(spec), "rows": rows, "wall_seconds": time.perf_counter() - t0, "machine": machine()}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    log("\n" + format_table(rows, spec.factors))
    pngs = []
    for c in spec.corpora:
        curves = {r["preset"]: r["position_loss"] for r in rows if r["corpus"] == c}
        pngs.append(plot_position_loss(curves, spec.seq_len, out / f"position_loss_{c}.png",
                                       f"{c}: test loss at {max(spec.factors)}x the training length",
                                       binned_input=True))
    log(f"\nwrote {out / 'results.json'}" + "".join(f", {p}" for p in pngs if p))
    return results


def format_table(rows: list[dict], factors) -> str:
    head = ["corpus", "model", "params", "val ppl"] + [f"ppl x{k}" for k in factors] + \
        [f"x{max(factors)}/x1", "train s"]
    return render_table(head, [[r["corpus"], r["preset"], f"{r['params']:,}", f"{r['val_ppl']:.3f}"]
                               + [f"{r[f'x{k}']['ppl']:.3f}" for k in factors]
                               + [f"{r[f'x{max(factors)}']['ppl'] / r['x1']['ppl']:.3f}" if 1 in factors else "-",
                                  f"{r['train_seconds']:.0f}"] for r in rows])

