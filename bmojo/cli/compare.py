"""`bmojo compare`: train presets on one recall task at a matched parameter count and compare them.

With no arguments it runs the built-in comparison, which asks what B'MOJO's memory buys at a bounded state: all
six presets on MQAR with every queried pair beyond the window, trained once at 64 tokens, then evaluated at 1x,
4x and 16x that length (the pairs stay at the start, the queries move to the end), printing accuracy and
decode-state bytes per length and plotting them.  It finishes in about 9 minutes on a 2-core CPU."""
from __future__ import annotations

import argparse
import os
from dataclasses import fields

from bmojo.cli.common import model_overrides, number_list, parse_value
from bmojo.config import ConfigError
from bmojo.data.synthetic import TASKS
from bmojo.eval.compare import CompareSpec, RunSpec, run_compare
from bmojo.models import PRESETS

ALL = ["transformer", "swa", "mamba", "hybrid", "bmojo-f", "bmojo"]
# The built-in comparison: 8 pairs at the start, queries from position 32 on, a window of 8, so every
# queried pair lies beyond the window; B'MOJO keeps M=32 eidetic tokens per layer (twice the 16 pair tokens: room
# for the filler its gate cannot tell from a pair at 16x the length; its decode state, 66,176 bytes, stays below the
# Transformer's 75,456 at the training length).
DEFAULT_TASK = {"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 8, "query_start": 32}
DEFAULT_MODEL = {"n_layers": 2, "window": 8, "chunk": 8, "memory_size": 32, "n_heads": 4, "ssm_head_dim": 16}
# The bmojo runs train the preset `bmojo-recall` (B'MOJO's learned selection for recall) with every token of a
# sequence in its training pool (train_memory_size = seq_len); --model-opt still overrides it.
RECALL_PRESET = "bmojo-recall"


FRONTIER = {"memory_sizes": "4,8,32", "windows": "16,32", "d_states": "4,64"}


def _task_fields() -> dict:
    """Every task option (union over tasks) -> [(task, its field)], in task order."""
    opts: dict[str, list] = {}
    for name, (cls, _) in TASKS.items():
        for f in fields(cls):
            opts.setdefault(f.name, []).append((name, f))
    return opts


def _task_help(per_task: list) -> str:
    """One help text for an option several tasks share: each distinct meaning once, with the tasks (and each
    task's default) it applies to."""
    by_help: dict[str, list] = {}
    for task, f in per_task:
        default = DEFAULT_TASK.get(f.name, f.default) if task == "mqar" else f.default  # what compare runs
        by_help.setdefault(f.metadata.get("help", ""), []).append(f"{task}: {default}")
    return "; ".join(f"{text} [{', '.join(tasks)}]" for text, tasks in by_help.items())


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="train presets on a recall task at matched size and compare (~9 min)",
                       description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--presets", default=",".join(ALL), help=f"comma-separated presets from {sorted(PRESETS)}")
    p.add_argument("--task", default="mqar", choices=sorted(TASKS), help="synthetic task")
    p.add_argument("--params", type=int, default=150_000, help="target parameter count (d_model is sized to it)")
    p.add_argument("--steps", type=int, default=800, help="training steps per run (early stop at --target-acc)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per step")
    p.add_argument("--sweep", default="6e-3", help="comma-separated learning rates; each model keeps its best "
                   "(6e-3 beats 3e-3 for both the Transformer and B'MOJO here: "
                   "benchmarks/results/selection_ablation)")
    p.add_argument("--target-acc", type=float, default=0.995, help="stop a run once eval accuracy reaches this")
    p.add_argument("--plateau", type=float, default=None, help="train each run until its eval accuracy plateaus: "
                   "stop once the best accuracy of the last quarter of its steps is at most this much above the best "
                   "before it (e.g. 0.01), with --steps as the cap; off by default (a fixed budget)")
    p.add_argument("--plateau-min-steps", type=int, default=2000, help="with --plateau: the rule is first checked "
                   "at this step (Mamba sits at chance for ~1,500 steps on the main job's task before it learns)")
    p.add_argument("--eval-examples", type=int, default=512, help="held-out sequences for evaluation")
    p.add_argument("--length-factors", default="4,16", help="also evaluate at these multiples of seq_len (with mqar "
                   "the pairs stay at the start and the queries move to the end); '' for none")
    p.add_argument("--eval-store", action="store_true", help="also evaluate the B'MOJO runs with a fresh long-term "
                   "store per batch (every token that leaves the eidetic memory is kept and searched by later "
                   "queries); its bytes are reported beside the decode state; train with --model-opt "
                   "train_store_topk=16 so the model learns to read one")
    p.add_argument("--selectors", default="", help="memory ablation: train bmojo once per eidetic scorer, "
                   "e.g. innovation,norm,random,recency,assoc (equal memory size, selection gate off)")
    p.add_argument("--memory-sizes", default="", help="memory sweep: train bmojo once per M, e.g. 4,8,16,32")
    p.add_argument("--windows", default="", help="window sweep: train swa once per W, e.g. 16,32")
    p.add_argument("--d-states", default="", help="state sweep: train mamba once per d_state, e.g. 4,64")
    p.add_argument("--frontier", action="store_true", help="the state frontier (Zoology's figure): adds the sweeps "
                   f"{FRONTIER} to the presets, so the plot shows accuracy against decode-state bytes")
    p.add_argument("--model-opt", action="append", default=[], metavar="FIELD=VALUE",
                   help="ModelConfig override for every run (repeatable), e.g. n_layers=2, window=8, attn_conv=false; "
                   f"built-in: {DEFAULT_MODEL}")
    p.add_argument("--paper-bmojo", action="store_true", help="train the bmojo runs as the paper defines the "
                   "layer (bmojo-paper: the innovation test, no gate, no SSM residual) instead of with the learned "
                   f"selection of the preset {RECALL_PRESET!r}: {PRESETS[RECALL_PRESET]})")
    p.add_argument("--seed", type=int, default=0, help="seed of init and data (the same for every run)")
    p.add_argument("--seeds", default="", help="comma-separated seeds, e.g. 0,1,2: every run once per seed, the table "
                   "shows the median (and the min) over seeds; overrides --seed")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="parallel training processes (one torch thread each)")
    p.add_argument("--out", default="runs/compare", help="folder for results.json, results.png and checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace a comparison already in --out")
    g = p.add_argument_group("task options (each applies to the tasks named in its help)")
    for name, per_task in _task_fields().items():
        g.add_argument(f"--{name.replace('_', '-')}", dest=f"task__{name}", default=None, metavar="V",
                       help=_task_help(per_task).replace("%", "%%") + "%(default).0s")  # defaults: per task
    p.set_defaults(func=run)


def build_spec(args) -> CompareSpec:
    task_opts = {k[6:]: v for k, v in vars(args).items() if k.startswith("task__") and v is not None}
    cls = TASKS[args.task][0]
    types = {f.name: f.type for f in fields(cls)}
    bad = sorted(set(task_opts) - set(types))
    if bad:
        raise ConfigError(f"task {args.task!r} has no option(s) {['--' + b.replace('_', '-') for b in bad]}")
    task_opts = {k: parse_value(v, types[k]) for k, v in task_opts.items()}
    if args.task == "mqar":
        task_opts = {**DEFAULT_TASK, **task_opts}
    user = model_overrides(args.model_opt)
    model = {**DEFAULT_MODEL, **user}
    T = task_opts.get("seq_len", getattr(cls(), "seq_len"))
    bmojo_preset = "bmojo-paper" if args.paper_bmojo else RECALL_PRESET
    pool = max(T, model["memory_size"])  # every token of a sequence (a pool is never below M)
    recipe = {**({} if args.paper_bmojo else {"train_memory_size": pool}), **user}  # the user's overrides win
    for flag, v in (("--eval-examples", args.eval_examples), ("--workers", args.workers), ("--steps", args.steps),
                    ("--batch-size", args.batch_size)):
        if v < 1:
            raise ConfigError(f"{flag}={v}: must be a positive integer")
    if args.plateau is not None and not 0 <= args.plateau < 1:
        raise ConfigError(f"--plateau={args.plateau}: must be in [0, 1)")
    presets = [p for p in args.presets.split(",") if p]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        raise ConfigError(f"--presets: unknown {unknown}; allowed: {sorted(PRESETS)}")
    runs = [RunSpec(p, bmojo_preset, recipe) if p == "bmojo" else RunSpec(p, p, {}) for p in presets]
    for s in [s for s in args.selectors.split(",") if s]:  # the scorers alone, at equal M
        runs.append(RunSpec(f"bmojo[{s}]", "bmojo", {"selector": s, "selection_gate": False, **user}))
    sweeps = {k: getattr(args, k) or (FRONTIER[k] if args.frontier else "") for k in FRONTIER}
    for m in [int(m) for m in sweeps["memory_sizes"].split(",") if m]:
        runs.append(RunSpec(f"bmojo[M={m}]", bmojo_preset, {**recipe, "memory_size": m}))
    for w in [int(w) for w in sweeps["windows"].split(",") if w]:
        runs.append(RunSpec(f"swa[W={w}]", "swa", {"window": w, "chunk": None}))
    for n in [int(n) for n in sweeps["d_states"].split(",") if n]:
        runs.append(RunSpec(f"mamba[N={n}]", "mamba", {"d_state": n}))
    if not runs:
        raise ConfigError("--presets '': nothing to compare; name presets, or a sweep (--selectors, --memory-sizes, "
                          "--windows, --d-states, --frontier)")
    lrs = number_list(args.sweep, float, "--sweep", lambda v: v > 0, "positive learning rates")
    if not lrs:
        raise ConfigError("--sweep: give at least one learning rate")
    factors = number_list(args.length_factors, int, "--length-factors", lambda v: v >= 1, "integers >= 1")
    seeds = number_list(args.seeds, int, "--seeds", lambda v: v >= 0, "integers >= 0")
    return CompareSpec(runs=runs, task=args.task, task_options=task_opts, model=model, params=args.params,
                       steps=args.steps, batch_size=args.batch_size, lrs=lrs, eval_examples=args.eval_examples,
                       target_acc=args.target_acc, plateau=args.plateau, plateau_min_steps=args.plateau_min_steps,
                       length_factors=factors, eval_store=args.eval_store, seed=args.seed, seeds=seeds, workers=args.workers,
                       out=args.out, overwrite=args.overwrite)


def run(args) -> int:
    spec = build_spec(args)
    from bmojo.data.synthetic import make_task

    make_task(spec.task, **spec.task_options)  # validate the task before any training
    run_compare(spec)
    return 0
