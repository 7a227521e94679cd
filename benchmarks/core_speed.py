"""Core speed checks of issue 2, forward + backward, measured in one run on this machine.

    python benchmarks/core_speed.py [--quick] [--allocator tuned|default] [--out FILE]

1. mamba2 chunked SSD vs its sequential reference (B=8, T=2048, E=256, N=16, head width 64).
2. mamba1 fast scan vs its sequential reference (same sizes).
3. B'MOJO layer (d_model=128) at T=2048 and T=8192: the time ratio shows whether cost is linear in T
   (steady state: T=8192 runs first and each size gets 3 untimed warm-up steps).
Prints a table and ratios and writes JSON with the machine description.  `--allocator tuned` (the default,
as bmojo's commands run) raises glibc's malloc thresholds (bmojo.utils.runtime); `default` leaves them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bmojo import preset
from bmojo.layers.bmojo import BMojoMixer
from bmojo.ops.scan import selective_scan, selective_scan_ref
from bmojo.ops.ssd import ssd_chunked, ssd_ref
from bmojo.bench.timing import fwd_bwd, scan_inputs, timeit
from bmojo.utils.runtime import machine, tune_cpu_allocator


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, not the reported numbers)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median reported)")
    ap.add_argument("--allocator", choices=["tuned", "default"], default="tuned",
                    help="tuned: keep freed memory for reuse (what bmojo's commands do); default: glibc as is")
    ap.add_argument("--out", default=None, help="JSON results (default benchmarks/results/core_speed_<allocator>.json)")
    args = ap.parse_args()
    args.out = args.out or f"benchmarks/results/core_speed_{args.allocator}.json"
    tuned = tune_cpu_allocator() if args.allocator == "tuned" else False
    print(f"allocator: {args.allocator} (applied: {tuned})")
    B, T, E, N, P = (2, 256, 64, 8, 32) if args.quick else (8, 2048, 256, 16, 64)
    g = torch.Generator().manual_seed(0)
    rows = {}
    for kind, fast, ref in (("mamba2", ssd_chunked, ssd_ref), ("mamba1", selective_scan, selective_scan_ref)):
        inp = scan_inputs(kind, B, T, E, N, P, g)
        for name, fn in (("fast", fast), ("ref", ref)):
            sec = timeit(fwd_bwd(lambda fn=fn: fn(*inp), inp), args.repeats)
            rows[f"{kind}_{name}"] = {"seconds": sec, "tokens_per_s": B * T / sec}
            print(f"{kind:7s} {name:5s} B={B} T={T} E={E} N={N}: {sec * 1e3:9.1f} ms  {B * T / sec:10.0f} tok/s", flush=True)

    D = E // 2
    cfg = preset("bmojo", d_model=D, n_heads=4, window=64, memory_size=64)
    torch.manual_seed(0)
    layer = BMojoMixer(cfg, 0)
    Ts = (T, 4 * T)
    for TT in reversed(Ts):  # largest first: the heap grows once, and both sizes are timed in steady state
        x = torch.randn(B, TT, D, generator=g, requires_grad=True)
        sec = timeit(fwd_bwd(lambda x=x: layer(x, return_state=False), [x]), args.repeats + 2, warmup=3)
        rows[f"bmojo_layer_T{TT}"] = {"seconds": sec, "tokens_per_s": B * TT / sec}
        print(f"bmojo layer D={D} W=64 M=64 B={B} T={TT}: {sec * 1e3:9.1f} ms  {B * TT / sec:10.0f} tok/s", flush=True)

    ratios = {
        "mamba2_chunked_over_ref_speedup": rows["mamba2_ref"]["seconds"] / rows["mamba2_fast"]["seconds"],
        "mamba1_fast_over_ref_speedup": rows["mamba1_ref"]["seconds"] / rows["mamba1_fast"]["seconds"],
        "bmojo_layer_time_ratio_4T_over_T": rows[f"bmojo_layer_T{Ts[1]}"]["seconds"] / rows[f"bmojo_layer_T{Ts[0]}"]["seconds"],
    }
    targets = {"mamba2_chunked_over_ref_speedup": ">= 5", "mamba1_fast_over_ref_speedup": ">= 1",
               "bmojo_layer_time_ratio_4T_over_T": "<= 4.5"}
    print("\nratios (measured in this run):")
    for k, v in ratios.items():
        print(f"  {k:36s} {v:7.2f}   target {targets[k]}")
    out = {"machine": machine(), "allocator": args.allocator, "sizes": {"B": B, "T": T, "E": E, "N": N, "P": P, "d_model": D},
           "quick": args.quick, "rows": rows, "ratios": ratios, "targets": targets,
           "command": f"python benchmarks/core_speed.py --allocator {args.allocator}" + (" --quick" if args.quick else "")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
