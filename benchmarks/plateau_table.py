"""The plateau comparison over seeds: every `bmojo compare` results.json given (one per seed, same settings) ->
one table of median (min) accuracy at 1x / 4x / 16x per model, each model's gain over the last quarter of its
learning curve (<= 0.01: plateaued by the rule; a run that reached the target accuracy has nothing left to gain),
table.md, table.json and curves.png (every seed's curve, one colour per model).

    python benchmarks/plateau_table.py benchmarks/results/compare_plateau/steps4000/seed*/results.json \\
        --out benchmarks/results/compare_plateau/steps4000
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bmojo.eval.compare import best_rows, plot_curves


def last_quarter_gain(curve: list) -> float:
    """Best accuracy over the last quarter of the steps minus the best before it."""
    last = curve[-1][0]
    before = [a for s, a in curve if s <= 0.75 * last] or [0.0]
    return max(a for s, a in curve if s > 0.75 * last) - max(before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="results.json files, one per seed")
    ap.add_argument("--out", required=True, help="folder for table.md, table.json and curves.png")
    a = ap.parse_args()
    runs, factors, order = [], (), []
    for f in a.results:
        r = json.loads(Path(f).read_text())
        runs += r["all_runs"]
        factors = tuple(r["spec"]["length_factors"])
        order = order or [x["label"] for x in r["spec"]["runs"]]
    best = best_rows(runs, order, factors)
    head = ["model", "params", "state bytes", "seeds", "acc 1x", *[f"acc {k}x" for k in factors], "steps",
            "gain, last quarter (max over seeds)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table = []
    for b in best:
        seeds = b.get("seeds") or [b]
        gains = [last_quarter_gain(s["curve"]) for s in seeds if s.get("curve")]
        stopped = all(s.get("stopped_early") for s in seeds)
        acc = lambda k: f"{b[k]:.3f}" + (f" ({b[k + '_min']:.3f})" if k + "_min" in b else "")
        lines.append("| " + " | ".join([b["label"], f"{b['params']:,}", f"{b['state_bytes']:,}", str(len(seeds)),
                                         acc("acc"), *[acc(f"acc_x{k}") for k in factors], str(b["steps"]),
                                         "reached 0.995" if stopped else f"{max(gains):+.3f}"]) + " |")
        table.append({**{k: v for k, v in b.items() if k not in ("seeds", "model")}, "last_quarter_gain": gains})
    out = Path(a.out)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "table.json").write_text(json.dumps(table, indent=1))
    plot_curves(runs, best, out / "curves.png", "MQAR, the main job's task: eval accuracy against steps "
                f"({len(a.results)} seed(s))")
    print("\n".join(lines))
    print(f"wrote {out / 'table.md'}, table.json and curves.png; median over seeds {np.unique([r['seed'] for r in runs])}")


if __name__ == "__main__":
    main()
