"""Run the suites, check the targets on the ratios measured in this run, write JSON and plots."""
from __future__ import annotations

import json
import operator
import time
from pathlib import Path

from bmojo.bench import suites
from bmojo.eval.jobs import render_table
from bmojo.utils.runtime import machine

SUITES = {"scan": suites.scan_suite, "attention": suites.attention_suite, "train": suites.train_suite,
          "decode": suites.decode_suite}
# (suite, ratio, comparison, bound): the speed targets, on the full sizes (set for the 2-core CPU; on a GPU
# the same ratios are reported against them for comparison)
TARGETS = [
    ("scan", "fused_over_reference", ">=", 10.0),
    ("scan", "fused_over_mambapy", ">=", 3.0),
    ("scan", "mamba2_over_fused_time", "<=", 1.0),
    ("train", "bmojo_over_transformer_tokens_per_s_T2048", ">=", 1.3),
    ("train", "bmojo_over_transformer_tokens_per_s_T8192", ">=", 2.5),
    ("train", "bmojo_op_calls_T8192_over_T2048", "<=", 1.05),
    ("train", "llama_layout_over_hf_llama_tokens_per_s_T2048", ">=", 1.0),
    ("decode", "bmojo_over_mamba_latency_1024", "<=", 1.5),
    ("decode", "bmojo_latency_32768_over_1024", "<=", 1.2),
    ("decode", "transformer_latency_32768_over_1024", ">", 1.0),
    ("decode", "bmojo_state_bytes_32768_over_1024", "==", 1.0),
]
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "==": operator.eq}


def run_bench(names: list[str], quick: bool, out: str | Path, device: str = "cpu", log=print) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "device": device, "quick": quick, "suites": {}}
    for name in names:
        log(f"[{name}]")
        t0 = time.perf_counter()
        results["suites"][name] = SUITES[name](quick, device=device, log=log)
        results["suites"][name]["wall_seconds"] = time.perf_counter() - t0
        (out / "bench.json").write_text(json.dumps(results, indent=1))  # partial results survive an interrupt
    results["targets"] = check_targets(results)
    (out / "bench.json").write_text(json.dumps(results, indent=1))
    rows = [[t["suite"], t["ratio"], f"{t['measured']:.3f}" if t["measured"] is not None else "-",
             f"{t['op']} {t['bound']:g}", {True: "yes", False: "NO", None: "-"}[t["met"]]] for t in results["targets"]]
    log("\nratios measured in this run" + (" (--quick sizes: not the targets' sizes)" if quick else "") + ":")
    log(render_table(["suite", "ratio", "measured", "target", "met"], rows))
    pngs = plot(results, out)
    log(f"\nwrote {out / 'bench.json'}" + "".join(f", {p}" for p in pngs))
    return results


def check_targets(results: dict) -> list[dict]:
    out = []
    for suite, ratio, op, bound in TARGETS:
        value = results["suites"].get(suite, {}).get("ratios", {}).get(ratio)
        met = None if value is None else bool(OPS[op](round(value, 6), bound))
        out.append({"suite": suite, "ratio": ratio, "measured": value, "op": op, "bound": bound, "met": met})
    return out


def plot(results: dict, out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    for suite, x, y, ylabel in (("train", "T", "tokens_per_s", "training tokens/s"),
                                ("decode", "context", "latency_s", "decode latency (s/token)")):
        rows = results["suites"].get(suite, {}).get("rows")
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for p in dict.fromkeys(r["preset"] for r in rows):
            pts = [(r[x], r[y]) for r in rows if r["preset"] == p]
            ax.plot(*zip(*pts), marker="o", label=p)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length" if x == "T" else "context length")
        ax.set_ylabel(ylabel)
        m = results["machine"]
        where = m.get("gpu", "CUDA") if results.get("device", "cpu").startswith("cuda") else \
            f"{m['cpu']}, {m['torch_threads']} threads"
        ax.set_title(f"{suite}: {where}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{suite}.png", dpi=120)
        plt.close(fig)
        made.append(out / f"{suite}.png")
    return made
