"""What the large-run training options cost and save, measured on this machine: one JSON row per measurement.

  compile     eager and `--compile` training steps/s at T=1024 for bmojo, transformer and mamba in one process
              (the same model, data and seed; the compiled run's step-1 loss must equal the eager one's within 1e-4)
  memory      peak training memory of one step at T=4096 with and without `--checkpoint-activations`, each in a
              fresh process (peak RSS during the steps minus RSS before the first)

    python benchmarks/train_options.py compile --out benchmarks/results/train_options/compile.json
    python benchmarks/train_options.py memory --out benchmarks/results/train_options/memory.json
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from bmojo import BMojoLM
from bmojo.models import size_to_params
from bmojo.train import TrainConfig, train


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    return f"{cpu}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def _batches(vocab, batch, T):
    def fn(step):
        x = torch.randint(0, vocab, (batch, T + 1), generator=torch.Generator().manual_seed(step))
        return x[:, :-1], x[:, 1:]
    return fn


def _model(preset, params, T, n_layers):
    torch.manual_seed(0)
    return BMojoLM(size_to_params(preset, params, vocab_size=256, max_seq_len=T, n_layers=n_layers))


def bench_compile(a) -> list[dict]:
    rows = []
    for preset in a.presets.split(","):
        res = {}
        for compiled in (False, True):
            torch._dynamo.reset()
            model = _model(preset, a.params, a.seq_len, a.n_layers)
            cfg = TrainConfig(steps=a.warmup_steps + a.steps, batch_size=a.batch, warmup=0, eval_every=0, log_every=1,
                              progress=False, compile=compiled)
            t0 = time.perf_counter()
            r = train(model, cfg, _batches(256, a.batch, a.seq_len))
            total = time.perf_counter() - t0
            times = [r.history[i]["elapsed_s"] for i in range(len(r.history))]
            timed = times[-1] - times[a.warmup_steps - 1]  # the steps after the first `warmup_steps`
            res[compiled] = {"step1_loss": r.history[0]["loss"], "steps_per_s": a.steps / timed,
                             "first_steps_s": times[a.warmup_steps - 1], "total_s": total}
            print(f"{preset} compile={compiled}: {res[compiled]}", flush=True)
        rows.append({"bench": "compile", "preset": preset, "params": _model(preset, a.params, a.seq_len, a.n_layers).num_params(),
                     "seq_len": a.seq_len, "n_layers": a.n_layers, "batch": a.batch, "eager": res[False], "compiled": res[True],
                     "speedup": res[True]["steps_per_s"] / res[False]["steps_per_s"],
                     "step1_loss_diff": abs(res[True]["step1_loss"] - res[False]["step1_loss"]), "machine": machine()})
    return rows


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_child(a) -> None:
    """One process, one setting: prints the peak memory of `a.steps` training steps."""
    model = _model(a.presets, a.params, a.seq_len, a.n_layers)
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch, warmup=0, eval_every=0, progress=False,
                      checkpoint_activations=a.checkpoint)
    batches = _batches(256, a.batch, a.seq_len)
    before = _rss()
    train(model, cfg, batches)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_bytes": peak - before}))


def bench_memory(a) -> list[dict]:
    rows = []
    for preset in a.presets.split(","):
        got = {}
        for ckpt in (False, True):
            cmd = [sys.executable, __file__, "memory-child", "--presets", preset, "--params", str(a.params),
                   "--seq-len", str(a.seq_len), "--n-layers", str(a.n_layers), "--batch", str(a.batch), "--steps", "2", "--threads", str(a.threads)]
            out = subprocess.run(cmd + (["--checkpoint"] if ckpt else []), capture_output=True, text=True, check=True)
            got[ckpt] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
            print(f"{preset} checkpoint_activations={ckpt}: {got[ckpt] / 2**20:.0f} MiB", flush=True)
        rows.append({"bench": "memory", "preset": preset, "seq_len": a.seq_len, "n_layers": a.n_layers, "batch": a.batch,
                     "params": _model(preset, a.params, a.seq_len, a.n_layers).num_params(), "peak_bytes": got[False],
                     "peak_bytes_checkpointed": got[True], "ratio": got[True] / got[False], "machine": machine()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["compile", "memory", "memory-child"])
    ap.add_argument("--presets", default="bmojo,transformer,mamba")
    ap.add_argument("--params", type=int, default=2_000_000, help="model size (default: 2,000,000)")
    ap.add_argument("--n-layers", type=int, default=8, help="blocks (d_model is sized to --params) (default: 8)")
    ap.add_argument("--seq-len", type=int, default=None, help="default: 1024 (compile), 4096 (memory)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (compile) (default: 10)")
    ap.add_argument("--warmup-steps", type=int, default=3, help="untimed first steps (the compile) (default: 3)")
    ap.add_argument("--checkpoint", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON file for the rows")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    a.seq_len = a.seq_len or (1024 if a.what == "compile" else 4096)
    if a.what == "memory-child":
        return memory_child(a)
    rows = bench_compile(a) if a.what == "compile" else bench_memory(a)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rows, indent=1))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
