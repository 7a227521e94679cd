"""The decode step's cost in operator calls, and what torch.compile does to it (issue 17's decode target).

    python benchmarks/decode_compile.py [--presets mamba,transformer,bmojo] [--no-compile] [--out FILE]

For each preset at the bench's decode size (~1M params, `bmojo bench`'s MODEL, batch 1, after a 1,024-token prefill):
the aten calls of one `model.step` (counted with a TorchDispatchMode), the eager step latency, and the latency of
`bmojo.inference.compile_step(model)` (torch.compile, dynamic positions) with its compile time and graph count, and
the ratios to Mamba.  The compiled step is warmed up over 160 tokens first (past chunk ends and a full turn of every
ring buffer, so every graph it needs exists before it is timed); then every (preset, eager or compiled) is timed for
16 tokens in turn, over 8 rounds (median; one torch thread), so a slow spell of the machine lands on all of them.
Writes JSON (default benchmarks/results/decode_compile.json).  Inductor's on-disk cache goes to a new temporary
folder, so the compile times are what a first run pays.
"""
import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bmojo_decode_compile_")  # before torch is imported

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bmojo.bench.suites import _model
from bmojo.inference import compile_step
from bmojo.utils.runtime import machine


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


ROUNDS, STEPS = 8, 16  # timed rounds (after a warm-up one) of STEPS tokens per (preset, mode)


@torch.no_grad()
def prepare(name: str, compiled: bool, inductor_options=None) -> tuple[dict, dict]:
    """The preset's row so far (aten calls; compile time and graphs) and its steps to time:
    {mode: (step, state, token)}."""
    m = _model(name, 1_000_000, 2048, "cpu").eval()
    ids = torch.randint(0, 256, (1, 1024), generator=torch.Generator().manual_seed(0))
    room = 1024 + 8 + 160 + (ROUNDS + 1) * STEPS  # every step made here fits a full-attention cache
    runs = {}
    for mode in ("eager", "compiled") if compiled else ("eager",):
        runs[mode] = m(ids, m.init_state(1, capacity=room), return_state=True).state
    state, tok = runs["eager"], ids[:, -1]
    for _ in range(3):
        m.step(tok, state)
    with _Count() as c:
        m.step(tok, state)
    row = {"preset": name, "aten_calls": sum(c.calls.values())}
    steps = {"eager": (m.step, state, tok)}
    if compiled:
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        step, state = compile_step(m, inductor_options=inductor_options), runs["compiled"]
        t = time.perf_counter()
        for _ in range(160):
            step(tok, state)
        row["compile_s"] = time.perf_counter() - t
        row["graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs
        steps["compiled"] = (step, state, tok)  # the same token tensor: another one's strides would recompile
    print(json.dumps(row), flush=True)
    return row, steps


@torch.no_grad()
def time_rounds(steps: dict) -> dict:
    """{(preset, mode): (step, state, token)} -> {(preset, mode): [seconds per token, every timed step]}, each key
    timed for STEPS tokens in turn, round after round."""
    times = {key: [] for key in steps}
    for r in range(ROUNDS + 1):
        for key, (step, state, tok) in steps.items():
            for _ in range(STEPS):
                t = time.perf_counter()
                step(tok, state)
                if r:  # round 0 warms up
                    times[key].append(time.perf_counter() - t)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="mamba,transformer,bmojo", help="(default: %(default)s)")
    ap.add_argument("--no-compile", action="store_true", help="count calls and time the eager step only")
    ap.add_argument("--inductor-defaults", action="store_true",
                    help="compile with inductor's default settings instead of compile_step's (to see what they fix)")
    ap.add_argument("--out", default="benchmarks/results/decode_compile.json", help="(default: %(default)s)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    presets = [p for p in a.presets.split(",") if p]
    rows, steps = {}, {}
    with torch._dynamo.config.patch(recompile_limit=64):  # every preset's graphs share model.step's code object
        for p in presets:
            rows[p], runs = prepare(p, not a.no_compile, {} if a.inductor_defaults else None)
            steps.update({(p, mode): run for mode, run in runs.items()})
        times = time_rounds(steps)
    for (p, mode), t in times.items():
        rows[p][f"{mode}_ms"] = statistics.median(t) * 1e3
        per_round = [statistics.median(t[i:i + STEPS]) for i in range(0, len(t), STEPS)]
        rows[p][f"{mode}_round_spread"] = (max(per_round) - min(per_round)) / statistics.median(per_round)
    ratios = {}
    for p in presets:
        for mode in ("eager", "compiled"):
            if p != "mamba" and "mamba" in rows and f"{mode}_ms" in rows[p]:
                ratios[f"{p}_over_mamba_{mode}"] = rows[p][f"{mode}_ms"] / rows["mamba"][f"{mode}_ms"]
    for p, row in rows.items():
        print(json.dumps(row))
    print(json.dumps(ratios))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": list(rows.values()), "ratios": ratios, "rounds": ROUNDS,
                                       "steps_per_round": STEPS, "machine": machine()}, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
