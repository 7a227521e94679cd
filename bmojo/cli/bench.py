"""`bmojo bench`: the speed suite in one process, with the ratios and targets measured in this run.

Suites: scan (fused C++ mamba1 scan vs the PyTorch chunked path, the sequential reference, mambapy and HF's
MambaMixer when installed, and mamba2 at equal width), attention (sliding window: chunked vs SDPA vs compiled
flex_attention), train (tokens/s and step peak memory of every preset at T=512, 2048, 8192), decode
(per-token latency and state bytes at 1k, 8k and 32k context).  Writes bench.json and PNG plots."""
from __future__ import annotations

import argparse

from bmojo.bench.run import SUITES, run_bench


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="speed suite: scans, attention, training, decode (ratios and targets)",
                       description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated, from {list(SUITES)}")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds, not the reported numbers")
    p.add_argument("--out", default="runs/bench", help="folder for bench.json and the plots")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where every suite runs")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from bmojo.config import ConfigError

    names = [s for s in args.suites.split(",") if s]
    bad = sorted(set(names) - set(SUITES))
    if bad:
        raise ConfigError(f"--suites: unknown {bad}; allowed: {list(SUITES)}")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ConfigError(f"--device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: no CUDA device is visible to torch")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {args.device}: allowed are cpu and cuda[:N]")
    run_bench(names, args.quick, args.out, device=str(device))
    return 0
