"""torch.compile of a whole training step (forward + backward) for each preset: it must compile, give the
eager loss and gradients, and we report compile time and the step-time ratio (eager / compiled).

    python benchmarks/compile_check.py [--presets transformer,bmojo] [--device cpu|cuda] [--T 256]

Writes benchmarks/results/compile_check_<device>.json.  Kept out of the test suite: compiling costs 20-50 s
per model on a CPU.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bmojo.bench.suites import PRESETS, _model
from bmojo.bench.timing import timeit
from bmojo.utils.runtime import machine, tune_cpu_allocator


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tune_cpu_allocator()
    rows = []
    for name in args.presets.split(","):
        model = _model(name, 1_000_000, args.T).to(args.device)
        ids = torch.randint(0, 256, (args.batch, args.T + 1), device=args.device)

        def loss_of(m):
            out = m(ids[:, :-1])
            loss = F.cross_entropy(out.logits.flatten(0, 1).float(), ids[:, 1:].flatten())
            return loss + (out.aux_loss if out.aux_loss is not None else 0)

        def step(m):
            model.zero_grad(set_to_none=True)
            loss = loss_of(m)
            loss.backward()
            return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

        compiled = torch.compile(model)
        t0 = time.perf_counter()
        c_loss, c_grads = step(compiled)
        compile_s = time.perf_counter() - t0
        e_loss, e_grads = step(model)
        grad_err = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(c_grads, e_grads))
        eager = timeit(lambda: step(model), repeats=3)
        comp = timeit(lambda: step(compiled), repeats=3)
        row = {"preset": name, "compile_s": compile_s, "loss_eager": e_loss.item(), "loss_compiled": c_loss.item(),
               "max_rel_grad_err": grad_err, "eager_s": eager, "compiled_s": comp, "speedup": eager / comp}
        rows.append(row)
        print(f"{name:12s} compiled in {compile_s:5.1f}s; loss {e_loss.item():.5f} eager vs {c_loss.item():.5f}, "
              f"grad rel err {grad_err:.1e}; step {eager * 1e3:.0f} ms eager, {comp * 1e3:.0f} ms compiled "
              f"({eager / comp:.2f}x)", flush=True)
        assert abs(e_loss.item() - c_loss.item()) < 1e-3 * abs(e_loss.item()) and grad_err < 1e-2, name
    out = Path(args.out or f"benchmarks/results/compile_check_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "T": args.T, "batch": args.batch, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
