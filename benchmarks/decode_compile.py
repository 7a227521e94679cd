"""The decode step's cost in operator calls, and what torch.compile does to it (issue 17's decode target).

    python benchmarks/decode_compile.py [--presets mamba,transformer,bmojo] [--no-compile] [--out FILE]

For each preset at the bench's decode size (~1M params, `bmojo bench`'s MODEL, batch 1, after a 1,024-token prefill):
the aten calls of one `model.step` (counted with a TorchDispatchMode), the eager step latency, and the latency of
`bmojo.inference.compile_step(model)` (torch.compile, dynamic positions) with its compile time and graph count
(median of 64 steps each, one torch thread).  The compiled step is warmed up over 160 tokens first: past chunk ends
and a full turn of every ring buffer, so every graph it needs exists before it is timed.
Writes JSON (default benchmarks/results/decode_compile.json).  Inductor's on-disk cache goes to a new temporary
folder, so the compile times are what a first run pays.
"""
import argparse
import collections
import json
import os
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


def _median_ms(step, tok, state, n=64):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step(tok, state)
        times.append(time.perf_counter() - t)
    return sorted(times)[n // 2] * 1e3


@torch.no_grad()
def measure(name: str, compiled: bool) -> dict:
    m = _model(name, 1_000_000, 2048, "cpu").eval()
    ids = torch.randint(0, 256, (1, 1024), generator=torch.Generator().manual_seed(0))
    state = m(ids, m.init_state(1, capacity=1400), return_state=True).state  # room for every step timed here
    tok = ids[:, -1]
    for _ in range(3):
        m.step(tok, state)
    with _Count() as c:
        m.step(tok, state)
    row = {"preset": name, "aten_calls": sum(c.calls.values()), "eager_ms": _median_ms(m.step, tok, state)}
    if compiled:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        step = compile_step(m)
        t = time.perf_counter()
        for _ in range(160):
            step(tok, state)
        row["compile_s"] = time.perf_counter() - t
        row["graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        row["compiled_ms"] = _median_ms(step, tok, state)
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="mamba,transformer,bmojo", help="(default: %(default)s)")
    ap.add_argument("--no-compile", action="store_true", help="count calls and time the eager step only")
    ap.add_argument("--out", default="benchmarks/results/decode_compile.json", help="(default: %(default)s)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = [measure(p, not a.no_compile) for p in a.presets.split(",") if p]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": rows, "machine": machine()}, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
