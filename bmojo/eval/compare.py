"""Train several models on one synthetic task on equal terms and compare them.

Every run gets the same task, the same data stream (same seed), the same step budget and a parameter count
matched by `size_to_params`; each model keeps its best learning rate of the sweep (as Zoology does).
Runs go to worker processes (one torch thread each); results are JSON, a table and a PNG plot of accuracy
against decode-state bytes.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bmojo.config import ConfigError
from bmojo.eval.jobs import claim_results_folder, render_table, run_jobs
from bmojo.data.synthetic import batch_stream, make_task
from bmojo.models import BMojoLM, size_to_params
from bmojo.train import TrainConfig, evaluate, train
from bmojo.utils.runtime import machine


@dataclass
class RunSpec:
    label: str  # e.g. "bmojo", "bmojo[selector=random]", "bmojo[M=8]"
    preset: str
    model: dict = field(default_factory=dict)  # ModelConfig overrides for this run


@dataclass
class CompareSpec:
    runs: list[RunSpec]
    task: str = "mqar"
    task_options: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)  # overrides shared by every run (window, n_layers, ...)
    params: int = 150_000
    steps: int = 600
    batch_size: int = 64
    lrs: tuple[float, ...] = (3e-3,)
    warmup: int = 50
    eval_every: int = 100
    eval_examples: int = 512
    target_acc: float | None = 0.995
    plateau: float | None = None  # stop a run at a plateau (TrainConfig.plateau), from plateau_min_steps on
    plateau_min_steps: int = 0
    length_factors: tuple[int, ...] = ()  # also evaluate at seq_len * k
    eval_store: bool = False  # B'MOJO runs: also evaluate with a fresh long-term store per batch (acc_store...)
    seed: int = 0
    seeds: tuple[int, ...] = ()  # several seeds of init and data (each run once per seed); () = (seed,)
    workers: int = 1
    out: str = "runs/compare"
    overwrite: bool = False  # replace the results and runs already in `out`


def _eval_batches(task: str, opts: dict, n: int, seed: int, batch: int = 128):
    _, gen = make_task(task, **opts)
    return [gen(min(batch, n - i), np.random.default_rng([seed, 7919, i])) for i in range(0, n, batch)]


def seeds_of(spec: CompareSpec) -> tuple[int, ...]:
    return tuple(spec.seeds) or (spec.seed,)


def run_dir(spec: CompareSpec, run: RunSpec, lr: float, seed: int | None = None) -> Path:
    """runs/<label>-lr<lr> (and -s<seed> when the comparison has several seeds)."""
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in run.label)
    tail = f"-s{seed}" if len(seeds_of(spec)) > 1 else ""
    return Path(spec.out) / "runs" / f"{safe}-lr{lr:g}{tail}"


def run_config(spec: CompareSpec, run: RunSpec):
    """The model config of `run`: its preset at the parameter budget, with the shared and its own overrides."""
    task_cfg, _ = make_task(spec.task, **spec.task_options)
    longest = task_cfg.seq_len * max(spec.length_factors, default=1)
    model_kw = {"vocab_size": task_cfg.vocab_size, "max_seq_len": longest, **spec.model, **run.model}
    try:
        return size_to_params(run.preset, spec.params, **model_kw)
    except ConfigError as e:
        raise ConfigError(f"run {run.label}: {e}") from None


def _one_run(args) -> dict:
    spec, run, lr, seed = args
    torch.set_num_threads(1)
    from bmojo.utils.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    task_cfg, gen = make_task(spec.task, **spec.task_options)
    T = task_cfg.seq_len
    cfg = run_config(spec, run)
    torch.manual_seed(seed)
    model = BMojoLM(cfg)
    tcfg = TrainConfig(steps=spec.steps, batch_size=spec.batch_size, lr=lr, warmup=spec.warmup,
                       eval_every=spec.eval_every, target_acc=spec.target_acc, plateau=spec.plateau,
                       plateau_min_steps=spec.plateau_min_steps, seed=seed,
                       progress=spec.workers <= 1)  # one worker runs here: its progress line is the only news
    evals = _eval_batches(spec.task, spec.task_options, spec.eval_examples, seed)
    res = train(model, tcfg, batch_stream(gen, spec.batch_size, seed), eval_batches=evals,
                out_dir=run_dir(spec, run, lr, seed), overwrite=spec.overwrite, desc=f"{run.label} lr={lr:g}",
                meta={"task": spec.task, "task_options": spec.task_options})
    row = {"label": run.label, "preset": run.preset, "lr": lr, "seed": seed, "params": model.num_params(),
           "d_model": cfg.d_model, "state_bytes": model.state_bytes(T), "acc": res.eval.get("acc", float("nan")),
           "loss": res.eval.get("loss", float("nan")), "steps": res.steps, "train_seconds": res.train_seconds,
           "stopped_early": res.stopped_early, "curve": [[h["step"], h["eval_acc"]] for h in res.history
                                                         if "eval_acc" in h], "model": cfg.to_dict()}
    stores = _store_opener(model) if spec.eval_store else None
    if stores is not None:
        res_s = evaluate(model, evals, stores)
        row["acc_store"], row["store_bytes"] = res_s["acc"], res_s["store_bytes"]
    for k in spec.length_factors:
        opts = {**spec.task_options, "seq_len": T * k}
        if spec.task == "mqar" and opts.get("query_start") is not None:
            opts["query_start"] = opts["query_start"] * k
        batches = _eval_batches(spec.task, opts, spec.eval_examples // 2, seed + k, 32)
        row[f"acc_x{k}"] = evaluate(model, batches)["acc"]
        row[f"state_bytes_x{k}"] = model.state_bytes(T * k)
        if stores is not None:  # the store's bytes are beside the decode state, never inside it
            res_s = evaluate(model, batches, stores)
            row[f"acc_store_x{k}"], row[f"store_bytes_x{k}"] = res_s["acc"], res_s["store_bytes"]
    return row


def _store_opener(model):
    """rows -> a fresh exact long-term store in a temporary folder (the previous one deleted), or None for a model
    without B'MOJO memory."""
    import shutil
    import tempfile

    from bmojo.memory import Store

    if not any(getattr(b.mixer, "memory_size", 0) > 0 for b in model.layers):
        return None
    root = Path(tempfile.mkdtemp(prefix="bmojo-compare-store-"))

    def open_store(rows):
        shutil.rmtree(root / "s", ignore_errors=True)
        return Store.for_model(root / "s", model, rows=rows)
    return open_store


def run_compare(spec: CompareSpec, log=print) -> dict:
    jobs = [(spec, run, lr, seed) for run in spec.runs for lr in spec.lrs for seed in seeds_of(spec)]
    out = Path(spec.out)
    for run in spec.runs:  # every config is checked before any training starts
        run_config(spec, run)
    claim_results_folder(out, spec.overwrite)
    n_seeds = len(seeds_of(spec))
    budget = f"{spec.steps} steps each" if spec.plateau is None else \
        f"until a plateau (gain <= {spec.plateau:g} over the last quarter, from step {spec.plateau_min_steps}) " \
        f"or {spec.steps} steps"
    log(f"compare: {len(spec.runs)} models x {len(spec.lrs)} learning rates" + (f" x {n_seeds} seeds" if n_seeds > 1
        else "") + f" = {len(jobs)} runs on {spec.task} {spec.task_options}, {budget}, ~{spec.params:,} params, "
        f"{spec.workers} worker(s)")
    t0 = time.perf_counter()
    rows = run_jobs(_one_run, jobs, spec.workers, log, lambda r: f"{r['label']} lr={r['lr']:g} seed={r['seed']}: "
                    f"acc {r['acc']:.3f} after {r['steps']} steps ({r['train_seconds']:.0f}s)",
                    watch=[run_dir(spec, *j[1:]) for j in jobs])
    order = [r.label for r in spec.runs]
    best = best_rows(rows, order, spec.length_factors)
    results = {"spec": {**asdict(spec), "runs": [asdict(r) for r in spec.runs]}, "best": best,
               "all_runs": rows, "wall_seconds": time.perf_counter() - t0, "machine": machine()}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    log("\n" + format_table(results["best"], spec.length_factors))
    png = plot(results["best"], out / "results.png", f"{spec.task} {spec.task_options}")
    curves = plot_curves(rows, best, out / "curves.png", f"{spec.task} {spec.task_options}")
    log(f"\nwrote {out / 'results.json'}" + (f", {png} and {curves}" if png else
                                             " (install the `plot` extra for the PNGs)"))
    return results


def best_rows(rows: list[dict], order: list[str], factors=()) -> list[dict]:
    """One row per model at its best learning rate, judged by the median accuracy over seeds.  With one seed the
    row is that run's; with several, every accuracy is the median over seeds, with `<key>_min` and `<key>_seeds`
    (per seed, in seed order) beside it, and `seeds` the runs' own rows."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["lr"]), []).append(r)
    best: dict[str, dict] = {}
    for (label, _), runs in groups.items():
        runs = sorted(runs, key=lambda r: r.get("seed", 0))
        row = dict(runs[0]) if len(runs) == 1 else _median_row(runs, factors)
        if label not in best or row["acc"] > best[label]["acc"]:
            best[label] = row
    return [best[k] for k in order if k in best]


def _median_row(runs: list[dict], factors) -> dict:
    row = {k: v for k, v in runs[0].items() if k not in ("curve", "seed")}
    for key in ["acc"] + [f"acc_x{k}" for k in factors] + ["acc_store"] + [f"acc_store_x{k}" for k in factors]:
        if key not in runs[0]:
            continue
        vals = [r[key] for r in runs]
        row[key], row[f"{key}_min"], row[f"{key}_seeds"] = float(np.median(vals)), min(vals), vals
    row["steps"] = int(np.median([r["steps"] for r in runs]))
    row["train_seconds"] = float(sum(r["train_seconds"] for r in runs))
    row["seeds"] = [{k: r[k] for k in ("seed", "steps", "stopped_early", "curve")} for r in runs]
    return row


def format_table(rows: list[dict], factors=()) -> str:
    """With several seeds each accuracy reads `median (min)`."""
    head = ["model", "params", "state bytes", "lr", "acc"]
    for k in factors:
        head += [f"acc x{k}", f"bytes x{k}"]
    acc = lambda r, key: (f"{r[key]:.3f}" + (f" ({r[key + '_min']:.3f})" if key + "_min" in r else "")) \
        if key in r else "-"
    store = any("acc_store" in r for r in rows)
    if store:
        head += ["acc, store"] + [f"acc x{k}, store" for k in factors] + ["store bytes (largest)"]
    body = []
    for r in rows:
        line = [r["label"], f"{r['params']:,}", f"{r['state_bytes']:,}", f"{r['lr']:g}", acc(r, "acc")]
        for k in factors:
            line += [acc(r, f"acc_x{k}"), f"{r[f'state_bytes_x{k}']:,}"]
        if store:
            biggest = max([r.get("store_bytes", 0)] + [r.get(f"store_bytes_x{k}", 0) for k in factors])
            line += [acc(r, "acc_store")] + [acc(r, f"acc_store_x{k}") for k in factors] + [f"{biggest:,}"]
        body.append(line + [str(r["steps"]), f"{r['train_seconds']:.0f}"])
    return render_table(head + ["steps", "train s"], body)


def plot(rows: list[dict], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    factors = sorted(int(k[5:]) for k in rows[0] if k.startswith("acc_x") and k[5:].isdigit()) if rows else []
    fig, axes = plt.subplots(1, 2 if factors else 1, figsize=(12 if factors else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    for r in rows:  # one point per evaluated length (1x, then each factor), joined by a line
        xs = [r["state_bytes"]] + [r[f"state_bytes_x{k}"] for k in factors]
        ys = [r["acc"]] + [r[f"acc_x{k}"] for k in factors]
        line, = ax.plot(xs, ys, marker="o", ms=5)
        ax.annotate(r["label"], (xs[0], ys[0]), textcoords="offset points", xytext=(5, 4), fontsize=8,
                    color=line.get_color())
        if factors:  # the same runs against the evaluated length
            axes[0, 1].plot([1] + factors, ys, marker="o", ms=5, color=line.get_color(), label=r["label"])
    ax.set_xscale("log")
    ax.set_xlabel("decode-state bytes" + (f" (points: 1x, {', '.join(f'{k}x' for k in factors)} the training length)"
                                          if factors else " at the training length"))
    for a in axes[0]:
        a.set_ylabel("accuracy")
        a.set_ylim(-0.02, 1.05)
        a.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    if factors:
        a = axes[0, 1]
        a.set_xscale("log", base=2)
        a.set_xticks([1] + factors, [f"{k}x" for k in [1] + factors])
        a.set_xlabel("evaluated length / training length")
        a.set_title("beyond the training length (the same weights)", fontsize=9)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(rows: list[dict], best: list[dict], path: Path, title: str) -> Path | None:
    """Learning curves: eval accuracy against steps, one colour per model at its chosen learning rate (one line per
    seed), so a reader sees which models had plateaued and which were still learning when they stopped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    chosen = {(b["label"], b["lr"]) for b in best}
    colours = {}
    for r in rows:
        if (r["label"], r["lr"]) not in chosen or not r.get("curve"):
            continue
        steps, accs = zip(*r["curve"])
        first = r["label"] not in colours
        line, = ax.plot(steps, accs, lw=1.3, color=colours.get(r["label"]),
                        label=f"{r['label']} (lr {r['lr']:g})" if first else None)
        colours.setdefault(r["label"], line.get_color())
    ax.set_xlabel("training step")
    ax.set_ylabel("eval accuracy at the training length")
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
