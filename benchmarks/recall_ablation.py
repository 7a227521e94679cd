"""One B'MOJO/baseline training run on the README's MQAR setting, for the memory ablations.

    python benchmarks/recall_ablation.py LABEL PRESET STEPS LR ['{"ModelConfig field": value, ...}']

Setting: V=256, T=64, 8 pairs at the start, queries from position 32 (all beyond the window W=8), 2 layers,
~150k parameters (size_to_params), chunk 8, M=16, batch 64, warmup 50, eval on 512 held-out sequences every
100 steps, one torch thread.  Writes benchmarks/results/recall_ablation/LABEL.json.  The README's ablation
rows were made with (two runs at a time on a 2-core CPU):

    python benchmarks/recall_ablation.py bmojo_inn bmojo 1500 3e-3
    python benchmarks/recall_ablation.py bmojo_random bmojo 1500 3e-3 '{"selector": "random"}'
    python benchmarks/recall_ablation.py bmojo_recency bmojo 1500 3e-3 '{"selector": "recency"}'
    python benchmarks/recall_ablation.py bmojo_sl1 bmojo 1500 3e-3 '{"score_layers": [1]}'
    python benchmarks/recall_ablation.py bmojo_gate bmojo 1500 3e-3 '{"selection_gate": true}'
    python benchmarks/recall_ablation.py bmojo_gate_long bmojo 3000 3e-3 '{"selection_gate": true}'
    python benchmarks/recall_ablation.py bmojo_M64 bmojo 1000 3e-3 '{"memory_size": 64}'
    python benchmarks/recall_ablation.py transformer transformer 1000 3e-3
    python benchmarks/recall_ablation.py swa swa 1000 3e-3
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bmojo import BMojoLM, size_to_params
from bmojo.data.synthetic import batch_stream, make_task
from bmojo.train import TrainConfig, train
from bmojo.utils.runtime import tune_cpu_allocator


def main():
    if len(sys.argv) < 5:
        print(__doc__)
        return 2
    tune_cpu_allocator()
    torch.set_num_threads(1)
    label, preset_name, steps, lr = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    over = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    task, gen = make_task("mqar", vocab_size=256, seq_len=64, num_kv_pairs=8, query_start=32)
    evals = [gen(256, np.random.default_rng([999, i])) for i in range(2)]
    kw = dict(vocab_size=256, n_layers=2, window=8, memory_size=16, chunk=8, n_heads=4, ssm_head_dim=16,
              max_seq_len=64)
    kw.update(over)
    cfg = size_to_params(preset_name, 150_000, **kw)
    torch.manual_seed(0)
    m = BMojoLM(cfg)
    t = time.perf_counter()
    res = train(m, TrainConfig(steps=steps, batch_size=64, lr=lr, warmup=50, eval_every=100, progress=False,
                               target_acc=0.995), batch_stream(gen, 64, 0), eval_batches=evals)
    out = dict(label=label, preset=preset_name, over=over, d=cfg.d_model, params=m.num_params(),
               state=m.state_bytes(64), steps=res.steps, sec=time.perf_counter() - t, acc=res.eval["acc"],
               curve=[round(h["eval_acc"], 3) for h in res.history if "eval_acc" in h])
    print(json.dumps(out), flush=True)
    dest = Path("benchmarks/results/recall_ablation")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"{label}.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
