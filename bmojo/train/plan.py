"""What a training run will need, found without allocating the model: `bmojo train --dry-run`.

The model is built on the meta device (shapes only), so a 1.4B-parameter recipe is planned in seconds on a laptop.
Training memory per GPU is estimated as
    weights + gradients + AdamW moments   16 bytes per parameter (fp32 master weights in every precision),
                                          divided by the process count under FSDP (sharded), whole under DDP
    activations                           the bytes the autograd graph saves for the backward pass of one
                                          micro-batch (batch_size / processes / grad_accum rows), counted by a
                                          meta-device forward through the PyTorch path (impl=fast) in the run's
                                          precision; with checkpoint_activations, every block's input plus the
                                          largest block's saved tensors (it is recomputed one block at a time)
The activation figure is the PyTorch path's: fused GPU kernels (flash attention, mamba_ssm's scan) save less,
so read it as an upper bound.  Allocator overhead and temporary buffers are not in it.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from bmojo.models import BMojoLM
from bmojo.train.config import TrainConfig

ADAMW_BYTES_PER_PARAM = 16  # fp32 weight 4 + gradient 4 + two moments 8


def saved_activation_bytes(model: BMojoLM, batch: int, seq_len: int) -> tuple[int, list[int]]:
    """(bytes saved for backward by one training forward of (batch, seq_len) tokens, per-block bytes) on a meta
    model; each storage is counted once."""
    model.train()
    model._check_ids = lambda *a, **k: None  # the id range check reads values, which meta tensors do not have
    saved: dict[int, int] = {}
    per_block: list[dict[int, int]] = []
    hooks = [b.register_forward_pre_hook(lambda m, i: per_block.append({})) for b in model.layers]

    def pack(t):
        s = t.untyped_storage()
        saved[s._cdata] = s.nbytes()
        if per_block:
            per_block[-1][s._cdata] = s.nbytes()
        return t

    try:
        ids = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(ids)
    finally:
        for h in hooks:
            h.remove()
        del model._check_ids
    return sum(saved.values()), [sum(b.values()) for b in per_block]


def plan(cfg, tcfg: TrainConfig, seq_len: int, processes: int = 1) -> dict:
    """The run's size and needs: parameters, decode-state bytes, tokens per step and the memory estimate per
    process (see the module docstring) for `processes` data-parallel processes (GPUs)."""
    dtype = torch.bfloat16 if tcfg.precision == "bf16-mixed" else torch.float32
    with torch.device("meta"):
        model = BMojoLM(replace(cfg, impl="fast"))
    n = model.num_params()
    rows = tcfg.batch_size // processes // tcfg.grad_accum
    if rows < 1 or tcfg.batch_size % (processes * tcfg.grad_accum):
        raise ValueError(f"batch_size={tcfg.batch_size} does not split into {processes} process(es) x "
                         f"grad_accum={tcfg.grad_accum} equal micro-batches")
    total, per_block = saved_activation_bytes(model.to(dtype), rows, seq_len)
    if tcfg.checkpoint_activations:
        block_input = rows * seq_len * cfg.d_model * torch.finfo(dtype).bits // 8
        act = cfg.n_layers * block_input + max(per_block) + (total - sum(per_block))  # + embedding and head
    else:
        act = total
    sharded = tcfg.parallel == "fsdp" and processes > 1
    states = ADAMW_BYTES_PER_PARAM * n // (processes if sharded else 1)
    return {"params": n, "non_embedding_params": model.num_params(non_embedding=True),
            "decode_state_bytes": model.state_bytes(seq_len, dtype=dtype), "tokens_per_step": tcfg.batch_size * seq_len,
            "processes": processes, "micro_batch_rows": rows, "precision": tcfg.precision,
            "memory_per_process": {"weights_grads_adamw": states, "activations": act, "total": states + act},
            "parallel": tcfg.parallel if processes > 1 else "single process"}


def describe(p: dict, name: str, target: int | None) -> str:
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    m = p["memory_per_process"]
    off = f" ({(p['params'] - target) / target:+.1%} from the target {target:,})" if target else ""
    return "\n".join([
        f"{name}: {p['params']:,} parameters{off}, {p['non_embedding_params']:,} without the embedding",
        f"  decode state: {p['decode_state_bytes']:,} bytes per sequence after the training length",
        f"  tokens per step: {p['tokens_per_step']:,}; micro-batch: {p['micro_batch_rows']} row(s) per process, "
        f"{p['processes']} process(es), {p['parallel']}, {p['precision']}",
        f"  memory per process (estimate): weights + gradients + AdamW {gib(m['weights_grads_adamw'])}, activations "
        f"{gib(m['activations'])}, total {gib(m['total'])}"])
