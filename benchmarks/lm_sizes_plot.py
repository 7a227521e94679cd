"""Test perplexity at the training length against parameter count, one line per model, from lm_compare results at
several --params (the ordering-as-models-grow question of the language-modelling issue).

    python benchmarks/lm_sizes_plot.py --corpus stdlib benchmarks/results/lm_compare_params250k/results.json \\
        benchmarks/results/lm_compare_residual/results.json --out benchmarks/results/lm_sizes_stdlib.png

Prints the table (model x size) and writes the PNG (needs matplotlib, the `plot` extra).
"""
import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="lm_compare results.json files, one per size")
    ap.add_argument("--corpus", default="stdlib", help="which corpus's rows (default: %(default)s)")
    ap.add_argument("--out", default="benchmarks/results/lm_sizes.png", help="the PNG (default: %(default)s)")
    args = ap.parse_args(argv)
    lines: dict[str, list] = {}
    for f in args.results:
        for r in json.loads(Path(f).read_text())["rows"]:
            if r["corpus"] == args.corpus:
                lines.setdefault(r.get("label", r["preset"]), []).append((r["params"], r["x1"]["ppl"]))
    for label, pts in sorted(lines.items()):
        print(f"{label:12s} " + "  ".join(f"{n:>9,} params: {p:.3f}" for n, p in sorted(pts)))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed: no plot")
        return 0
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in sorted(lines.items()):
        n, p = zip(*sorted(pts))
        ax.plot(n, p, marker="o", label=label)
    ax.set_xscale("log")
    sizes = sorted({n for pts in lines.values() for n, _ in pts})
    ticks = [m * 10 ** k for k in range(4, 9) for m in (1, 2.5, 5)]  # 1, 2.5, 5 x a power of ten
    ax.set_xticks([t for t in ticks if sizes[0] * 0.8 <= t <= sizes[-1] * 1.25])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1e6:g}M"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("parameters")
    ax.set_ylabel("test perplexity per byte at the training length")
    ax.set_title(f"{args.corpus}: perplexity against size (800 steps)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
