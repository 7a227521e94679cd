"""Train several models on one synthetic task on equal terms and compare them.

Every run gets the same task, the same data stream (same seed), the same step budget and a parameter count
matched by `size_to_params`; each model keeps its best learning rate of the sweep (as Zoology does).
Runs go to worker processes (one torch thread each); results are JSON, a table and a PNG plot of accuracy
against decode-state bytes.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bmojo.config import ConfigError
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
    length_factors: tuple[int, ...] = ()  # also evaluate at seq_len * k
    seed: int = 0
    workers: int = 1
    out: str = "runs/compare"
    overwrite: bool = False  # replace the results and runs already in `out`


def _eval_batches(task: str, opts: dict, n: int, seed: int, batch: int = 128):
    _, gen = make_task(task, **opts)
    return [gen(min(batch, n - i), np.random.default_rng([seed, 7919, i])) for i in range(0, n, batch)]


def run_dir(spec: CompareSpec, run: RunSpec, lr: float) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in run.label)
    return Path(spec.out) / "runs" / f"{safe}-lr{lr:g}"


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
    spec, run, lr = args
    torch.set_num_threads(1)
    from bmojo.utils.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    task_cfg, gen = make_task(spec.task, **spec.task_options)
    T = task_cfg.seq_len
    cfg = run_config(spec, run)
    torch.manual_seed(spec.seed)
    model = BMojoLM(cfg)
    tcfg = TrainConfig(steps=spec.steps, batch_size=spec.batch_size, lr=lr, warmup=spec.warmup,
                       eval_every=spec.eval_every, target_acc=spec.target_acc, seed=spec.seed, progress=False)
    evals = _eval_batches(spec.task, spec.task_options, spec.eval_examples, spec.seed)
    res = train(model, tcfg, batch_stream(gen, spec.batch_size, spec.seed), eval_batches=evals,
                out_dir=run_dir(spec, run, lr), overwrite=spec.overwrite,
                meta={"task": spec.task, "task_options": spec.task_options})
    row = {"label": run.label, "preset": run.preset, "lr": lr, "params": model.num_params(),
           "d_model": cfg.d_model, "state_bytes": model.state_bytes(T), "acc": res.eval.get("acc", float("nan")),
           "loss": res.eval.get("loss", float("nan")), "steps": res.steps, "train_seconds": res.train_seconds,
           "stopped_early": res.stopped_early, "curve": [[h["step"], h["eval_acc"]] for h in res.history
                                                         if "eval_acc" in h], "model": cfg.to_dict()}
    for k in spec.length_factors:
        opts = {**spec.task_options, "seq_len": T * k}
        if spec.task == "mqar" and opts.get("query_start") is not None:
            opts["query_start"] = opts["query_start"] * k
        batches = _eval_batches(spec.task, opts, spec.eval_examples // 2, spec.seed + k, 32)
        row[f"acc_x{k}"] = evaluate(model, batches)["acc"]
        row[f"state_bytes_x{k}"] = model.state_bytes(T * k)
    return row


def claim_results_folder(out: Path, overwrite: bool) -> None:
    """Refuse a folder that holds a comparison unless `overwrite` (then its partial rows are cleared; each run
    folder is replaced as its run starts)."""
    made = [p.name for p in (out / "results.json", out / "rows.jsonl", out / "runs") if p.exists()]
    if made and not overwrite:
        raise ConfigError(f"{out} already holds a comparison ({', '.join(made)}); choose another --out or pass "
                          "--overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.jsonl").unlink(missing_ok=True)


def run_compare(spec: CompareSpec, log=print) -> dict:
    jobs = [(spec, run, lr) for run in spec.runs for lr in spec.lrs]
    out = Path(spec.out)
    for run in spec.runs:  # every config is checked before any training starts
        run_config(spec, run)
    claim_results_folder(out, spec.overwrite)
    log(f"compare: {len(spec.runs)} models x {len(spec.lrs)} learning rates = {len(jobs)} runs on {spec.task} "
        f"{spec.task_options}, {spec.steps} steps each, ~{spec.params:,} params, {spec.workers} worker(s)")
    t0 = time.perf_counter()
    rows = run_jobs(_one_run, jobs, spec.workers, log, lambda r: f"{r['label']} lr={r['lr']:g}: acc {r['acc']:.3f} "
                    f"after {r['steps']} steps ({r['train_seconds']:.0f}s)",
                    watch=[run_dir(spec, *j[1:]) for j in jobs])
    best = {}
    for r in rows:  # best learning rate per model
        if r["label"] not in best or r["acc"] > best[r["label"]]["acc"]:
            best[r["label"]] = r
    order = [r.label for r in spec.runs]
    results = {"spec": {**asdict(spec), "runs": [asdict(r) for r in spec.runs]}, "best": [best[k] for k in order],
               "all_runs": rows, "wall_seconds": time.perf_counter() - t0, "machine": machine()}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    log("\n" + format_table(results["best"], spec.length_factors))
    png = plot(results["best"], out / "results.png", f"{spec.task} {spec.task_options}")
    log(f"\nwrote {out / 'results.json'}" + (f" and {png}" if png else " (install the `plot` extra for a PNG)"))
    return results


def run_jobs(fn, jobs: list, workers: int, log, describe, watch: list[Path] | None = None,
             every: float = 30.0) -> list:
    """[fn(job) for job in jobs] in `workers` spawned processes (here if workers <= 1), logging a line per result
    as it finishes; results come back in the order they finish.  `fn` must be a module-level function.  With
    `watch` (each job's run folder), every `every` seconds a line per running job shows its progress, read from
    the metrics.jsonl the training loop writes there."""
    t0, rows = time.perf_counter(), []
    if workers <= 1:
        results = map(fn, jobs)
    else:
        pool = mp.get_context("spawn").Pool(workers, initializer=_ignore_ctrl_c)
        results = pool.imap_unordered(fn, jobs)
    try:
        while len(rows) < len(jobs):
            if workers <= 1 or watch is None:
                row = next(results)
            else:
                try:
                    row = results.next(timeout=every)
                except mp.TimeoutError:
                    for line in running_lines(watch):
                        log(f"  ... {line}")
                    continue
            rows.append(row)
            log(f"  [{len(rows)}/{len(jobs)} {time.perf_counter() - t0:.0f}s] {describe(row)}")
    finally:
        if workers > 1:
            pool.terminate()
    return rows


def _ignore_ctrl_c() -> None:
    """In a worker: Ctrl-C is the parent's to handle (it stops the pool and exits 130)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def running_lines(folders: list[Path]) -> list[str]:
    """A progress line for each run folder whose run has started and not finished (no final checkpoint yet):
    step, loss, accuracy, the last evaluation and the time left at its pace so far."""
    lines = []
    for folder in folders:
        log = folder / "metrics.jsonl"
        if not log.exists() or (folder / "checkpoint").exists():
            continue
        last = {}  # the latest value of each field (training rows and evaluation rows alternate)
        for line in log.read_text().splitlines():
            try:
                last.update(json.loads(line))
            except ValueError:  # a line being written: read it next time
                break
        if not last:
            continue
        step, total, el = last.get("step", 0), last.get("steps"), last.get("elapsed_s")
        parts = [f"step {step}" + (f"/{total}" if total else "")]
        parts += [f"{k} {last[k]:.3f}" for k in ("loss", "acc", "eval_acc", "eval_ppl") if k in last]
        if total and el and step:
            parts.append(f"~{(total - step) * el / step / 60:.1f} min left")
        lines.append(f"{folder.name}: " + ", ".join(parts))
    return lines


def format_table(rows: list[dict], factors=()) -> str:
    head = ["model", "params", "state bytes", "lr", "acc"]
    for k in factors:
        head += [f"acc x{k}", f"bytes x{k}"]
    body = []
    for r in rows:
        line = [r["label"], f"{r['params']:,}", f"{r['state_bytes']:,}", f"{r['lr']:g}", f"{r['acc']:.3f}"]
        for k in factors:
            line += [f"{r[f'acc_x{k}']:.3f}", f"{r[f'state_bytes_x{k}']:,}"]
        body.append(line + [str(r["steps"]), f"{r['train_seconds']:.0f}"])
    return render_table(head + ["steps", "train s"], body)


def render_table(head: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    lines = [head] + rows
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    fmt = lambda l: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(l, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(l) for l in rows])


def plot(rows: list[dict], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    factors = sorted(int(k[5:]) for k in rows[0] if k.startswith("acc_x")) if rows else []
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
