"""HF `generate` on a bmojo model carries bmojo's bounded decode state: memory stays flat over 10k tokens.

    python benchmarks/hf_generate_memory.py [--preset bmojo] [--tokens 10000]

Wraps a ~1M-parameter model (the LM benchmark's shapes) as `BMojoForCausalLM`, generates greedily from a
16-token prompt, and records, at every 1,000th new token, the decode state's bytes and the process's
resident memory. Writes benchmarks/results/hf_generate_memory_<preset>.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bmojo.bench.suites import _model
from bmojo.bench.timing import status_kb
from bmojo.hf.modeling import BMojoForCausalLM
from bmojo.utils.runtime import machine, tune_cpu_allocator


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bmojo")
    ap.add_argument("--tokens", type=int, default=10_000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tune_cpu_allocator()
    model = BMojoForCausalLM.from_bmojo(_model(args.preset, 1_000_000, args.tokens + 64)).eval()
    marks, t0 = [], time.perf_counter()
    original = model._update_model_kwargs_for_generation

    def record(outputs, model_kwargs, *a, **k):
        n = outputs.bmojo_state.pos - 16
        if n % 1000 == 0 or n == args.tokens - 1:
            marks.append({"new_tokens": n, "state_bytes": outputs.bmojo_state.nbytes(),
                          "rss_mib": status_kb("VmRSS") / 1024, "seconds": time.perf_counter() - t0})
            print(f"{n:6d} tokens: state {marks[-1]['state_bytes']:,} bytes, RSS {marks[-1]['rss_mib']:.1f} MiB, "
                  f"{marks[-1]['seconds']:.0f} s", flush=True)
        return original(outputs, model_kwargs, *a, **k)

    model._update_model_kwargs_for_generation = record
    with torch.no_grad():
        out = model.generate(torch.zeros(1, 16, dtype=torch.long), max_new_tokens=args.tokens, do_sample=False)
    assert out.shape[1] == 16 + args.tokens
    path = Path(args.out or f"benchmarks/results/hf_generate_memory_{args.preset}.json")
    path.write_text(json.dumps({"machine": machine(), "preset": args.preset, "params": model.model.num_params(),
                                "marks": marks}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
