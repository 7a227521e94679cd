"""The selection ablation as a Markdown table: one row per run of `benchmarks/recall_ablation.py`, failures included.

    python benchmarks/selection_table.py [benchmarks/results/selection_ablation/rows.jsonl ...]

Columns: the run's label and overrides, seed, filler, d_model, parameters, decode-state bytes at T=64, accuracy
after the run's steps with memory M (acc), the same weights reading every past token (acc, all kept: how much the
selection costs) or with the memory forced to hold exactly the pairs (pairs kept: a perfect selector, since the
pairs are the oldest 2P = M tokens), and, where measured, the same at 4x and 16x the training length (state bytes do
not change); "pair share": the share of the final memory (mean over layers) holding pair tokens, 1 = a perfect
selection, where the run recorded it.
"""
import json
import sys
from pathlib import Path

DEFAULT = Path("benchmarks/results/selection_ablation/rows.jsonl")


def _f(r: dict, k: str) -> str:
    return f"{r[k]:.3f}" if isinstance(r.get(k), (int, float)) else "-"


def _share(r: dict, k: str) -> str:
    v = r.get(k)
    return f"{sum(v) / len(v):.3f}" if isinstance(v, list) and v else "-"


def table(rows: list[dict]) -> str:
    head = ("| run | overrides | seed | filler | d | params | state B | steps | acc | acc, all kept | acc, pairs kept "
            "| pair share | acc 4x | 4x, pairs kept | 4x pair share | acc 16x | 16x, pairs kept | 16x pair share |")
    lines = [head, "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        over = ", ".join(f"{k}={v}" for k, v in r.get("over", {}).items()) or "-"
        lines.append(f"| {r['label']} | {over} | {r.get('seed', 0)} | {r.get('filler', 'random')} | {r['d']} | "
                     f"{r['params']:,} | {r['state']:,} | {r['steps']} | {_f(r, 'acc')} | {_f(r, 'acc_memory_all')} | "
                     f"{_f(r, 'acc_oldest_kept')} | {_share(r, 'memory_pair_share')} | {_f(r, 'acc_x4')} | "
                     f"{_f(r, 'acc_x4_oldest_kept')} | {_share(r, 'memory_pair_share_x4')} | {_f(r, 'acc_x16')} | "
                     f"{_f(r, 'acc_x16_oldest_kept')} | {_share(r, 'memory_pair_share_x16')} |")
    return "\n".join(lines)


def main(paths: list[str]) -> int:
    rows = []
    for p in [Path(x) for x in paths] or [DEFAULT]:
        rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
