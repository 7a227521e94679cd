"""`bmojo demo`: train a small model on the Zen of Python (byte level) on the CPU, then generate from it."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from bmojo.data.text import decode_bytes, encode_bytes, random_windows, zen_of_python
from bmojo.data.text.tokenizer import ByteTokenizer
from bmojo.inference import generate
from bmojo.models import PRESETS, BMojoLM, preset
from bmojo.train import TrainConfig, train


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a tiny model on the Zen of Python, then generate (about a minute)",
                       description=__doc__)
    p.add_argument("--preset", default="bmojo", choices=sorted(PRESETS), help="which model of the family")
    p.add_argument("--steps", type=int, default=300, help="training steps")
    p.add_argument("--seq-len", type=int, default=96, help="training sequence length (bytes)")
    p.add_argument("--prompt", default="Beautiful is better", help="text to continue after training")
    p.add_argument("--new-tokens", type=int, default=160, help="bytes to generate")
    p.add_argument("--out", default="runs/demo", help="folder for the checkpoint, metrics.jsonl and result.json")
    p.add_argument("--seed", type=int, default=0, help="seed of init and data")
    p.add_argument("--overwrite", action="store_true", help="replace a demo run already in --out")
    p.set_defaults(func=run)


def _check_args(args) -> None:
    """The options checked, and the run folder claimed, before anything is trained."""
    from bmojo.config import ConfigError
    from bmojo.train.loop import claim_run_folder

    for name in ("steps", "seq_len", "new_tokens"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if not args.prompt:
        raise ConfigError("--prompt: must be a non-empty text (the model continues it)")
    try:
        claim_run_folder(args.out, args.overwrite)  # before the run, not after it
    except ConfigError:
        raise ConfigError(f"{args.out} already holds a demo run; pass --overwrite to train it again, or choose "
                          "another --out") from None


def run(args) -> int:
    _check_args(args)
    text = zen_of_python()
    tokens = encode_bytes(text)
    torch.manual_seed(args.seed)
    cfg = preset(args.preset, vocab_size=256, d_model=96, n_layers=2, n_heads=4, window=16, memory_size=16,
                 ssm_head_dim=32, max_seq_len=max(4096, args.seq_len + args.new_tokens + len(args.prompt)))
    model = BMojoLM(cfg)
    print(f"demo: {args.preset} ({model.num_params():,} params, decode state {model.state_bytes(4096):,} bytes "
          f"at 4k tokens) learns the Zen of Python ({len(tokens)} bytes) for {args.steps} steps", flush=True)

    def batch_fn(step: int):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        return random_windows(tokens, 16, args.seq_len, g)

    g_eval = torch.Generator().manual_seed(12345)
    evals = [random_windows(tokens, 16, args.seq_len, g_eval) for _ in range(2)]
    tcfg = TrainConfig(steps=args.steps, batch_size=16, lr=3e-3, warmup=20, eval_every=100, log_every=10,
                       seed=args.seed)
    res = train(model, tcfg, batch_fn, eval_batches=evals, out_dir=args.out, overwrite=True, desc=args.preset,
                meta={"tokenizer": ByteTokenizer().to_dict()})
    print(f"trained {res.steps} steps in {res.train_seconds:.1f}s: eval loss {res.eval['loss']:.3f}, "
          f"next-byte accuracy {res.eval['acc']:.3f}", flush=True)

    prompt = encode_bytes(args.prompt)[None]
    sys.stdout.write(f"\n--- generation (greedy, streamed) ---\n{args.prompt}")
    t0 = time.perf_counter()
    out = generate(model, prompt, args.new_tokens, temperature=0.0,
                   callback=lambda tok: (sys.stdout.write(decode_bytes(tok)), sys.stdout.flush()))
    dt = time.perf_counter() - t0
    completion = decode_bytes(out[0, prompt.shape[1]:])
    print(f"\n--- {out.shape[1] - prompt.shape[1]} bytes in {dt:.2f}s ---")
    result = {"preset": args.preset, "params": model.num_params(), "steps": res.steps,
              "train_seconds": res.train_seconds, "eval": res.eval, "prompt": args.prompt, "completion": completion,
              "completion_in_training_text": (args.prompt + completion)[:60] in text, "checkpoint": res.checkpoint}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {Path(args.out) / 'result.json'} and the checkpoint {res.checkpoint}")
    return 0
