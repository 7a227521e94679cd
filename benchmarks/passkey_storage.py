"""Passkey retrieval far beyond the training length, with and without the long-term store (bmojo.memory).

    python benchmarks/passkey_storage.py train                 # ~1 h on 2 CPU cores: the model, trained at 256
    python benchmarks/passkey_storage.py train --seq-len 1024 --steps 3000 --lr 1e-3 --device cuda \
        --init benchmarks/results/passkey_storage/model --checkpoint benchmarks/results/passkey_storage/model_store \
        --model-opts '{"memory_size": 16, "train_store_topk": 16}'   # 5 min on one H200: trained with a store
    python benchmarks/passkey_storage.py eval --checkpoint benchmarks/results/passkey_storage/model_store \
        --lengths 16384,65536,131072 --samples 8,4,2 [--model-opts '{"memory_decay": 0.5}'] [--admit memory]

The models: a 2-layer B'MOJO (d_model 64, W=32, C=32) trained on `passkey` (bmojo.data.synthetic: a needle
`[marker] d1..d4` at a random depth in random filler, asked at the end).  `model` was trained at 256 tokens with
an eidetic memory of M=256 and no store; `model_store` continues it at 1,024 tokens with M=16 and
`train_store_topk=16` (each training sequence reads a store built from its own evicted entries), so it learns
to read a store.  At evaluation the context is 16k..128k tokens, so the needle must survive hundreds of memory
updates among random (hence surprising) filler.  For each sample the haystack is prefilled in parallel
segments, then the four digits are generated greedily by the decode path; accuracy is the fraction of digits
right.  Each sample runs twice, without and with a store (a fresh folder each time); the store's size on disk
and its in-RAM index are recorded, and decode latency is timed over extra decode steps after the prefill, with
and without the store, in alternating blocks in the same process (the overhead ratio).  Results: benchmarks/results/passkey_storage/
LABEL.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bmojo import BMojoLM
from bmojo.config import ModelConfig
from bmojo.data.synthetic import PasskeyConfig, batch_stream, make_task, passkey
from bmojo.memory import Store, StoreConfig
from bmojo.train import TrainConfig, train
from bmojo.train.checkpoint import load_checkpoint, save_checkpoint
from bmojo.utils.runtime import machine

OUT = Path("benchmarks/results/passkey_storage")
MODEL = dict(vocab_size=64, d_model=64, n_layers=2, n_heads=4, window=32, chunk=32, ssm_head_dim=16, pattern="B")


def cmd_train(args) -> int:
    torch.set_num_threads(args.threads)
    task, gen = make_task("passkey", vocab_size=64, seq_len=args.seq_len, digits=4)
    evals = [gen(128, np.random.default_rng([999, i])) for i in range(2)]
    cfg = ModelConfig(**{**MODEL, "memory_size": args.memory, "max_seq_len": args.seq_len, **json.loads(args.model_opts)})
    torch.manual_seed(0)
    model = BMojoLM(cfg)
    before = {"steps": 0, "train_seconds": 0.0}
    if args.init:  # continue from an earlier run's weights (a new optimizer and schedule), with --model-opts
        model, before = load_checkpoint(args.init, overrides=json.loads(args.model_opts))
        cfg = model.cfg
    dev = torch.device(args.device)
    model.to(dev)
    stream = batch_stream(gen, 32, before["steps"])
    t = time.perf_counter()
    res = train(model, TrainConfig(steps=args.steps, batch_size=32, lr=args.lr, warmup=50, eval_every=100,
                                   target_acc=0.995, seed=before["steps"], save_every=100 if args.run_dir else 0),
                lambda step: tuple(x.to(dev) for x in stream(step)),
                eval_batches=[tuple(x.to(dev) for x in b) for b in evals], out_dir=args.run_dir,
                resume=bool(args.run_dir) and (Path(args.run_dir) / "checkpoint").exists())
    model.cpu()
    meta = {"model": cfg.to_dict(), "task": task.to_dict(), "steps": before["steps"] + res.steps,
            "acc": res.eval["acc"], "train_seconds": before["train_seconds"] + time.perf_counter() - t,
            "params": model.num_params(), "stages": before.get("stages", []) + [
                {"steps": res.steps, "lr": args.lr, "acc": res.eval["acc"], "init": args.init, "seq_len": args.seq_len,
                 "model_opts": json.loads(args.model_opts), "device": str(dev), "machine": machine(),
                 "seconds": time.perf_counter() - t}]}
    save_checkpoint(args.checkpoint, model, meta)
    print(json.dumps({k: v for k, v in meta.items() if k != "model"}))
    return 0


@torch.no_grad()
def run_sample(model, ids, key, store, segment):
    """Prefill ids (1, L) up to the query marker, generate the digits greedily -> (result, decode state)."""
    n = key.shape[0]
    q = ids.shape[1] - n  # position of the query marker
    state = model.init_state(1, store=store)
    t0 = time.perf_counter()
    for s in range(0, q + 1, segment):
        out = model(ids[:, s:min(s + segment, q + 1)], state, return_state=True)
        state = out.state
    prefill = time.perf_counter() - t0
    logits, got = out.logits[:, -1], []
    for _ in range(n):
        tok = logits.argmax(-1)
        got.append(int(tok))
        logits, state = model.step(tok, state)
    return {"correct": int(sum(g == int(k) for g, k in zip(got, key))), "digits": n, "prefill_s": prefill}, state


@torch.no_grad()
def decode_ms(model, states, steps, block=32):
    """Milliseconds per decode step for each state, timed in alternating blocks of `block` steps over the same
    tokens (each block holds one memory update, so the store's writes are counted) and reduced to the median
    block, so that drift in the machine's speed hits every state alike."""
    filler = torch.randint(12, model.cfg.vocab_size, (steps,), generator=torch.Generator().manual_seed(1))
    times = [[] for _ in states]
    for b in range(0, steps, block):
        for st, t in zip(states, times):
            t0 = time.perf_counter()
            for tok in filler[b:b + block]:
                model.step(tok[None], st)
            t.append((time.perf_counter() - t0) / len(filler[b:b + block]))
    return [1e3 * float(np.median(t)) for t in times]


def cmd_eval(args) -> int:
    torch.set_num_threads(args.threads)
    # --model-opts: inference-time settings (e.g. a smaller memory_size, a memory_decay < 1)
    model, meta = load_checkpoint(args.checkpoint, overrides=json.loads(args.model_opts))
    model.eval()
    lengths = [int(x) for x in args.lengths.split(",")]
    samples = [int(x) for x in args.samples.split(",")]
    scfg = StoreConfig(topk=args.topk, search=args.search, ann_threshold=args.ann_threshold, admit=args.admit)
    rows = []
    for L, ns in zip(lengths, samples):
        depths = np.linspace(0.1, 0.6, ns) if ns > 1 else [0.35]
        for i, d in enumerate(depths):
            x, y = passkey(PasskeyConfig(vocab_size=64, seq_len=L, digits=4, depth=float(d)), 1,
                           np.random.default_rng([L, i]))
            key = y[0, y[0] >= 0]
            row = {"length": L, "depth": float(d), "sample": i}
            row["without"], plain = run_sample(model, x, key, None, args.segment)
            folder = Path(tempfile.mkdtemp(prefix="bmojo-passkey-store-", dir=args.tmp))
            try:
                with Store.for_model(folder / "store", model, cfg=scfg) as store:
                    row["with"], stored = run_sample(model, x, key, store, args.segment)
                    row["without"]["decode_ms"], row["with"]["decode_ms"] = decode_ms(
                        model, [plain, stored], args.latency_steps)
                    store.flush()
                    info = store.info()
                    row["with"].update(store_entries=sum(info["entries"].values()), disk_bytes=info["disk_bytes"],
                                       index_bytes=info["index_bytes"],
                                       ann=any(ix.ann is not None for ls in store.layers.values() for ix in ls.index))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for L in lengths:
        rs = [r for r in rows if r["length"] == L]
        acc = {m: sum(r[m]["correct"] for r in rs) / sum(r[m]["digits"] for r in rs) for m in ("without", "with")}
        summary[str(L)] = {
            "samples": len(rs), "acc_without": acc["without"], "acc_with": acc["with"],
            "decode_ms_without": float(np.median([r["without"]["decode_ms"] for r in rs])),
            "decode_ms_with": float(np.median([r["with"]["decode_ms"] for r in rs])),
            "decode_overhead": float(np.median([r["with"]["decode_ms"] / r["without"]["decode_ms"] for r in rs])),
            "prefill_s_without": float(np.median([r["without"]["prefill_s"] for r in rs])),
            "prefill_s_with": float(np.median([r["with"]["prefill_s"] for r in rs])),
            "store_entries": int(np.median([r["with"]["store_entries"] for r in rs])),
            "disk_bytes": int(max(r["with"]["disk_bytes"] for r in rs)),
            "index_bytes": int(max(r["with"]["index_bytes"] for r in rs)),
            "ann": any(r["with"]["ann"] for r in rs),
            "peak_rss_bytes": int(max(r["peak_rss_bytes"] for r in rs)),
        }
    res = {"checkpoint": str(args.checkpoint), "train": {k: v for k, v in meta.items() if k in
                                                          ("task", "steps", "acc", "params")},
           "memory_size": model.cfg.memory_size, "memory_decay": model.cfg.memory_decay,
           "model_opts": json.loads(args.model_opts), "window": model.cfg.window, "store": vars(scfg),
           "state_bytes": model.state_bytes(1), "segment": args.segment, "threads": args.threads,
           "machine": machine(), "summary": summary, "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.label}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--seq-len", type=int, default=256)
    t.add_argument("--memory", type=int, default=256, help="eidetic memory M at training")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--model-opts", default="{}", help="JSON ModelConfig overrides")
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--init", default=None, help="start from this checkpoint's weights (a further training stage)")
    t.add_argument("--checkpoint", default=str(OUT / "model"))
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--run-dir", default=None, help="also checkpoint every 100 steps here (and resume from it), so "
                   "a run stopped by a time limit keeps its progress")
    t.add_argument("--device", default="cpu", help="train here (cpu, cuda); the checkpoint is saved from the CPU")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval")
    e.add_argument("--checkpoint", default=str(OUT / "model"))
    e.add_argument("--lengths", default="16384,65536,131072")
    e.add_argument("--samples", default="8,4,2")
    e.add_argument("--topk", type=int, default=16)
    e.add_argument("--search", default=StoreConfig.search, choices=["exact", "ann", "auto"])
    e.add_argument("--ann-threshold", type=int, default=StoreConfig.ann_threshold)
    e.add_argument("--admit", default=StoreConfig.admit, choices=["evicted", "memory"],
                   help="what the store keeps: every token that leaves the eidetic pool, or only the entries pushed "
                   "out of the memory (chosen by the innovation test): fewer entries, a faster search")
    e.add_argument("--segment", type=int, default=4096)
    e.add_argument("--latency-steps", type=int, default=256, help="decode steps timed after each prefill")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--tmp", default=None, help="where the stores are made (default: the system temp folder)")
    e.add_argument("--label", default="eval")
    e.add_argument("--model-opts", default="{}", help="JSON ModelConfig overrides at inference, e.g. "
                   '\'{"memory_decay": 0.5}\'')
    e.set_defaults(func=cmd_eval)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
