"""Train the model family on real text on equal terms, and compare perplexity at and beyond the training length.

Every model gets the same corpus, tokenizer, batches (same seed), schedule and step count, at a parameter count
matched by `size_to_params`.  Each is then scored on the test split at 1x..16x its training length over the same
target tokens (see `bmojo.eval.ppl`).  Results: JSON, a table, and a PNG of loss against token position.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bmojo.cli.common import model_overrides
from bmojo.config import ConfigError
from bmojo.data.text.corpus import TokenCorpus
from bmojo.eval.jobs import claim_results_folder, render_table, run_jobs
from bmojo.eval.ppl import binned, eval_regions, length_eval, plot_position_loss
from bmojo.models import PRESETS as ALL_PRESETS
from bmojo.train.config import TrainConfig
from bmojo.train.lm import LMSpec, model_config, train_lm
from bmojo.utils.runtime import machine

PRESETS = ["transformer", "swa", "mamba", "hybrid", "bmojo-f", "bmojo"]


@dataclass
class LMRow:
    """One model of the comparison: a preset with ModelConfig overrides, named `label` in the results."""
    label: str
    preset: str
    model: dict = field(default_factory=dict)

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", self.label):
            raise ConfigError(f"row label {self.label!r}: use letters, digits and _ . + - only (it names a folder)")
        if self.preset not in ALL_PRESETS:
            raise ConfigError(f"row {self.label!r}: unknown preset {self.preset!r}; allowed: {sorted(ALL_PRESETS)}")


def parse_row(text: str) -> LMRow:
    """`LABEL=PRESET[,FIELD=VALUE...]` -> LMRow, e.g. `res=bmojo,ssm_residual=true`."""
    head, *opts = text.split(",")
    label, sep, name = head.partition("=")
    if not sep:
        raise ConfigError(f"--row {text!r}: expected LABEL=PRESET[,FIELD=VALUE...]")
    return LMRow(label, name, model_overrides(opts))


@dataclass
class LMCompareSpec:
    corpora: dict[str, str]  # corpus label -> prepared corpus folder
    presets: list[str] = field(default_factory=lambda: list(PRESETS))
    rows: list[LMRow] = field(default_factory=list)  # models beyond `presets` (each a preset with overrides)
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
    overwrite: bool = False  # replace the results and runs already in `out`


def _one_run(args) -> dict:
    spec, corpus_label, row = args
    torch.set_num_threads(1)
    from bmojo.utils.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    corpus = TokenCorpus(spec.corpora[corpus_label])
    lm = LMSpec(row.preset, spec.seq_len, spec.params, {**spec.model, **row.model})
    tcfg = TrainConfig(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, warmup=spec.warmup,
                       eval_every=spec.eval_every, eval_batches=spec.eval_batches, seed=spec.seed, progress=False)
    model, res = train_lm(lm, corpus, tcfg, Path(spec.out) / "runs" / f"{corpus_label}-{row.label}",
                          overwrite=spec.overwrite)
    span = spec.seq_len * max(spec.factors)
    regions = eval_regions(corpus.split_documents("test"), span, spec.regions)
    t0 = time.perf_counter()
    ev = length_eval(model, regions, [spec.seq_len * k for k in spec.factors], corpus.tokenizer.token_bytes())
    out = {"corpus": corpus_label, "label": row.label, "preset": row.preset, "options": row.model,
           "params": model.num_params(), "d_model": model.cfg.d_model,
           "state_bytes": model.state_bytes(spec.seq_len), "steps": res.steps, "train_seconds": res.train_seconds,
           "tokens": res.steps * spec.batch_size * spec.seq_len, "eval_seconds": time.perf_counter() - t0,
           "val_ppl": res.eval.get("ppl"), "regions": len(regions), "model": model.cfg.to_dict(),
           "curve": [[h["step"], h["eval_ppl"]] for h in res.history if "eval_ppl" in h]}
    for k in spec.factors:
        e = ev[spec.seq_len * k]
        out[f"x{k}"] = {key: e[key] for key in ("loss", "ppl", "bpb", "windows", "tokens")}
    # loss against position at the longest context, in 64 bins (the full curve is 16 x seq_len numbers)
    centres, means = binned(ev[span]["per_position"], 64)
    out["position_loss"] = [centres.tolist(), means.tolist()]
    return out


def spec_rows(spec: LMCompareSpec) -> list[LMRow]:
    """The comparison's models: the plain presets, then the extra rows; labels must be unique."""
    rows = [LMRow(p, p) for p in spec.presets] + [r if isinstance(r, LMRow) else LMRow(**r) for r in spec.rows]
    seen = [r.label for r in rows]
    dup = sorted({x for x in seen if seen.count(x) > 1})
    if dup:
        raise ConfigError(f"row label(s) {dup} used twice")
    return rows


def run_lm_compare(spec: LMCompareSpec, log=print) -> dict:
    models = spec_rows(spec)
    jobs = [(spec, c, r) for c in spec.corpora for r in models]
    out = Path(spec.out)
    partial = out / "rows.jsonl"  # each row as it finishes, so an interrupted comparison keeps what it measured
    for c, folder in spec.corpora.items():  # every model's config is checked before any training starts
        vocab = TokenCorpus(folder).tokenizer.vocab_size
        for r in models:
            try:
                model_config(LMSpec(r.preset, spec.seq_len, spec.params, {**spec.model, **r.model}), vocab)
            except ConfigError as e:
                raise ConfigError(f"row {r.label!r}: {e}") from None
    claim_results_folder(out, spec.overwrite)
    log(f"lm_compare: {len(models)} models x {len(spec.corpora)} corpora, {spec.steps} steps of "
        f"{spec.batch_size}x{spec.seq_len} tokens, ~{spec.params:,} params, {spec.workers} worker(s)")
    t0 = time.perf_counter()

    def describe(r):
        with partial.open("a") as f:
            f.write(json.dumps(r) + "\n")
        return f"{r['corpus']} {r['label']}: " + ", ".join(f"ppl x{k} {r[f'x{k}']['ppl']:.3f}" for k in spec.factors)

    rows = run_jobs(_one_run, jobs, spec.workers, log, describe,
                    watch=[out / "runs" / f"{c}-{r.label}" for _, c, r in jobs])
    order = {(c, r.label): i for i, (_, c, r) in enumerate(jobs)}
    rows.sort(key=lambda r: order[(r["corpus"], r["label"])])
    results = {"spec": asdict(spec), "rows": rows, "wall_seconds": time.perf_counter() - t0, "machine": machine()}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    log("\n" + format_table(rows, spec.factors))
    pngs = []
    for c in spec.corpora:
        curves = {r["label"]: r["position_loss"] for r in rows if r["corpus"] == c}
        pngs.append(plot_position_loss(curves, spec.seq_len, out / f"position_loss_{c}.png",
                                       f"{c}: test loss at {max(spec.factors)}x the training length",
                                       binned_input=True))
    log(f"\nwrote {out / 'results.json'}" + "".join(f", {p}" for p in pngs if p))
    return results


def format_table(rows: list[dict], factors) -> str:
    head = ["corpus", "model", "params", "val ppl"] + [f"ppl x{k}" for k in factors] + \
        [f"x{max(factors)}/x1", "train s"]
    return render_table(head, [[r["corpus"], r.get("label", r["preset"]), f"{r['params']:,}", f"{r['val_ppl']:.3f}"]
                               + [f"{r[f'x{k}']['ppl']:.3f}" for k in factors]
                               + [f"{r[f'x{max(factors)}']['ppl'] / r['x1']['ppl']:.3f}" if 1 in factors else "-",
                                  f"{r['train_seconds']:.0f}"] for r in rows])

