"""One B'MOJO/baseline training run on the main job's MQAR setting, for the memory ablations.

    python benchmarks/recall_ablation.py LABEL PRESET STEPS LR ['{"ModelConfig field": value, ...}']
        [--seed S] [--filler random|markov|phrase] [--lengths 4,16] [--out DIR]

Setting: V=256, T=64, 8 pairs at the start, queries from position 32 (all beyond the window W=8), 2 layers,
~150k parameters (size_to_params), chunk 8, M=16, batch 64, warmup 50, eval on 512 held-out sequences every
100 steps, one torch thread.  `memory_pair_recall`: per layer, the share of the 2P pair tokens the final memory
holds (any M); `memory_value_share`: the share of its entries that are value-range tokens.  `gate_stats`: per gated layer, the mean gate logit of pair values, pair keys, filler (and filler
beyond position 64), the filler's 99th percentile, and per sequence how many filler tokens outrank the median and
the weakest pair value (the length at which they outnumber M's spare slots is where selection fails).
`memory_pair_share`: per layer, the share of the final memory that holds pair tokens
(1 = the 2P = M pairs exactly; the selection's precision whatever the accuracy).  `--lengths` also evaluates at
those multiples of T (pairs at the start, queries from 32k on) and records the decode-state bytes there.  Writes
DIR/LABEL.json (default benchmarks/results/recall_ablation) and appends the same row to DIR/rows.jsonl.  Rows of
the README's first ablation (two runs at a time on a 2-core CPU):

    python benchmarks/recall_ablation.py bmojo_inn bmojo 1500 3e-3
    python benchmarks/recall_ablation.py bmojo_random bmojo 1500 3e-3 '{"selector": "random"}'
    python benchmarks/recall_ablation.py bmojo_gate bmojo 1500 3e-3 '{"selection_gate": true}'
    python benchmarks/recall_ablation.py transformer transformer 1000 3e-3

The selection ablation (benchmarks/results/selection_ablation) is `benchmarks/selection_ablation.sh`.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bmojo import BMojoLM, size_to_params
from bmojo.data.synthetic import FILLERS, batch_stream, make_task
from bmojo.train import TrainConfig, evaluate, load_checkpoint, save_checkpoint, train
from bmojo.utils.runtime import machine, tune_cpu_allocator

TASK = dict(vocab_size=256, seq_len=64, num_kv_pairs=8, query_start=32)
MODEL = dict(vocab_size=256, n_layers=2, window=8, memory_size=16, chunk=8, n_heads=4, ssm_head_dim=16)


class _Oldest(torch.nn.Module):
    """A scorer that ranks older tokens first, far above any gate logit: the memory keeps positions 0 .. M-1 (the
    gate still biases the read, as the model was trained)."""

    def forward(self, u, f_prev=None, pos=None, state=None):
        return -1e6 * pos.float()[None].expand(u.shape[0], -1), None, state


def _evals(opts: dict, n: int, seed: int, batch: int):
    _, gen = make_task("mqar", **opts)
    return [gen(batch, np.random.default_rng([seed, i])) for i in range(n // batch)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("label")
    p.add_argument("preset")
    p.add_argument("steps", type=int)
    p.add_argument("lr", type=float)
    p.add_argument("over", nargs="?", default="{}", help="ModelConfig overrides as JSON")
    p.add_argument("--seed", type=int, default=0, help="init and data seed (default 0)")
    p.add_argument("--params", type=int, default=150_000, help="parameter target (default 150000)")
    p.add_argument("--filler", default="random", choices=FILLERS, help="mqar filler (default random)")
    p.add_argument("--lengths", default="", help="also evaluate at these multiples of T, e.g. 4,16")
    p.add_argument("--eval-memory-sizes", default="", help="also evaluate at every length with these eidetic "
                   "capacities M (the same weights), e.g. 32,64: does a larger memory at evaluation recover selection?")
    p.add_argument("--out", default="benchmarks/results/recall_ablation", help="results folder")
    p.add_argument("--load", default="", help="skip training: run the diagnostics on a model saved with --save")
    p.add_argument("--save", default="", help="also save the trained model here (safetensors + config.json)")
    a = p.parse_args(argv)
    tune_cpu_allocator()
    torch.set_num_threads(1)
    over = json.loads(a.over)
    factors = [int(k) for k in a.lengths.split(",") if k]
    eval_sizes = [int(k) for k in a.eval_memory_sizes.split(",") if k]
    task = {**TASK, "filler": a.filler}
    _, gen = make_task("mqar", **task)
    evals = _evals(task, 512, 999 + 1000 * a.seed, 256)
    cfg = None if a.load else size_to_params(a.preset, a.params, **{**MODEL, "max_seq_len": 64 * max(factors, default=1), **over})
    t = time.perf_counter()
    if a.load:  # the diagnostics of a model saved by --save (PRESET, STEPS, LR and the overrides are not used)
        m, meta = load_checkpoint(a.load)
        cfg, steps, curve = m.cfg, meta["steps"], []
        acc = evaluate(m, evals)["acc"]
    else:
        torch.manual_seed(a.seed)
        m = BMojoLM(cfg)
        res = train(m, TrainConfig(steps=a.steps, batch_size=64, lr=a.lr, warmup=50, eval_every=100, progress=False,
                                   target_acc=0.995, seed=a.seed), batch_stream(gen, 64, a.seed), eval_batches=evals)
        steps, acc = res.steps, res.eval["acc"]
        curve = [round(h["eval_acc"], 3) for h in res.history if "eval_acc" in h]
    out = dict(label=a.label, preset=a.preset, over=over, seed=a.seed, filler=a.filler, d=cfg.d_model,
               params=m.num_params(), state=m.state_bytes(64), steps=steps, sec=time.perf_counter() - t,
               acc=acc, curve=curve, **({"loaded": a.load} if a.load else {}))
    if a.save:
        save_checkpoint(a.save, m, {"label": a.label, "task": task, "seed": a.seed, "steps": steps})
    mixers = [b.mixer for b in m.layers if getattr(b.mixer, "memory_size", 0) > 0]

    def every_token(T, batches):  # diagnostic: the same weights reading every past token: is selection the brake?
        return with_memory(T, batches)
    def with_memory(size, batches):  # diagnostic: the same weights with another eidetic capacity at evaluation
        sizes = [x.memory_size for x in mixers]
        for x in mixers:
            x.memory_size = x.selection.memory_size = size
        acc = evaluate(m, batches)["acc"]
        for x, n in zip(mixers, sizes):
            x.memory_size = x.selection.memory_size = n
        return acc
    def oldest_kept(batches):  # diagnostic: a perfect selector here (the pairs are the oldest 2P = M tokens)
        saved = [x.selection.scorer for x in mixers]
        for x in mixers:
            x.selection.scorer = _Oldest()
        acc = evaluate(m, batches)["acc"]
        for x, sc in zip(mixers, saved):
            x.selection.scorer = sc
        return acc
    @torch.no_grad()
    def memory_stats(batches):  # diagnostic, per layer's final memory (one forward per batch): the share of its
        m.eval()                # entries that are pair tokens (1 = the 2P = M pairs exactly), the share of the 2P
        shares, kept, values = [], [], []  # pair tokens it holds (any M), the share of value-range entries
        for x, _ in batches:
            st = m(x, return_state=True).state
            pos = torch.stack([s.mem.pos for s in st.layers if getattr(s, "mem", None) is not None])  # (L, B, M)
            pair = (pos >= 0) & (pos < 2 * TASK["num_kv_pairs"])
            shares.append(pair.float().mean((1, 2)))
            kept.append(pair.float().sum(-1).mean(-1))
            tok = x[None].expand(pos.shape[0], -1, -1).gather(2, pos.clamp(min=0))  # (L, B, M)
            values.append(((tok >= TASK["vocab_size"] // 2) & (pos >= 0)).float().mean((1, 2)))
        P2 = 2 * TASK["num_kv_pairs"]
        mean = lambda vs, d=1: [round(v / d, 4) for v in torch.stack(vs).mean(0).tolist()]  # noqa: E731
        return mean(shares), mean(kept, P2), mean(values)
    @torch.no_grad()
    def gate_stats(batches):  # diagnostic: where the learned gate puts pair tokens among the filler, per layer
        gated = [x.selection for x in mixers if x.selection.gate is not None]
        if not gated:
            return None
        logits = []
        hooks = [x.gate.register_forward_hook(lambda mod, inp, out: logits.append(out[..., 0])) for x in gated]
        m.eval()
        rows = [[] for _ in gated]
        P = TASK["num_kv_pairs"]
        for x, y in batches:
            logits.clear()
            m(x)
            for r, g in zip(rows, logits):  # g (B, T)
                filler = torch.ones_like(g, dtype=torch.bool)
                filler[:, :2 * P] = False
                filler &= y == -100  # queries are not filler
                vals, keys = g[:, 1:2 * P:2], g[:, 0:2 * P:2]
                above = ((g[:, :, None] > vals[:, None, :]) & filler[..., None]).sum(1).float()  # (B, P)
                late = filler.clone()
                late[:, :64] = False
                r.append(dict(value=vals.mean().item(), key=keys.mean().item(),
                              filler=g[filler].mean().item(), filler_p99=g[filler].quantile(0.99).item(),
                              filler_late=g[late].mean().item() if late.any() else float("nan"),
                              filler_above_median_value=above.median(-1).values.mean().item(),
                              filler_above_weakest_value=above.max(-1).values.mean().item()))
        for h in hooks:
            h.remove()
        return [{k: round(sum(d[k] for d in r) / len(r), 3) for k in r[0]} for r in rows]
    if mixers:
        out["acc_memory_all"] = every_token(64, evals)
        out["acc_oldest_kept"] = oldest_kept(evals)
        out["memory_pair_share"], out["memory_pair_recall"], out["memory_value_share"] = memory_stats(evals)
        out["gate_stats"] = gate_stats(evals)
    for k in factors:  # the pairs stay at the start; queries from 32k on, so every one is far beyond the window
        opts = {**task, "seq_len": 64 * k, "query_start": 32 * k}
        batches = _evals(opts, 256, 4242 + k, 32)
        out[f"acc_x{k}"] = evaluate(m, batches)["acc"]
        out[f"state_x{k}"] = m.state_bytes(64 * k)
        if mixers:
            out[f"acc_x{k}_memory_all"] = every_token(64 * k, batches)
            out[f"acc_x{k}_oldest_kept"] = oldest_kept(batches)
            out[f"memory_pair_share_x{k}"], out[f"memory_pair_recall_x{k}"], out[f"memory_value_share_x{k}"] = \
                memory_stats(batches)
            out[f"gate_stats_x{k}"] = gate_stats(batches)
            for size in eval_sizes:
                out[f"acc_x{k}_M{size}"] = with_memory(size, batches)
    out["machine"] = machine()
    print(json.dumps(out), flush=True)
    dest = Path(a.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"{a.label}.json").write_text(json.dumps(out, indent=1))
    with open(dest / "rows.jsonl", "a") as f:
        f.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
