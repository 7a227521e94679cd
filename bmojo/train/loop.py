"""The one training loop used by every command.

`batch_fn(step) -> (inputs (B, T) long, labels (B, T) long)` must be a pure function of the step (seeded
generators), so that a resumed run sees exactly the data an uninterrupted one would.  Labels are -100
where nothing is asked; the LM head runs only at labelled positions.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from bmojo.train.checkpoint import load_checkpoint, load_optimizer, read_meta, save_checkpoint
from bmojo.train.config import TrainConfig
from bmojo.train import dist
from bmojo.train.optim import lr_at, make_optimizer, no_decay_names
from bmojo.train.progress import MetricsLog, Progress

Batch = tuple[torch.Tensor, torch.Tensor]


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN/Inf; the message names the step and the first offending tensor."""


def _finite(t: torch.Tensor) -> bool:
    t = t.to_local() if hasattr(t, "to_local") else t  # a DTensor shard (FSDP2): this process's part
    return bool(torch.isfinite(t).all())


def first_nonfinite(model, inputs, labels) -> str:
    """Where non-finite values first appear: a parameter, else the first module output (in execution order) of
    a forward pass on the batch, else a gradient.  (Every process of a distributed run calls it: the forward
    is collective.)"""
    found: list[str] = []

    def hook(mod, _inp, out, name=None):
        t = out[0] if isinstance(out, tuple) else getattr(out, "logits", out)
        if not found and torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
            found.append(f"output of {name or 'the model'} ({type(mod).__name__})")

    handles = [m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n)) for n, m in model.named_modules()]
    try:
        with torch.no_grad():
            loss_and_acc(model, inputs, labels)
    finally:
        for h in handles:
            h.remove()
    for name, p in model.named_parameters():
        if not _finite(p):
            return f"parameter {name}"
    if found:
        return found[0]
    for name, p in model.named_parameters():
        if p.grad is not None and not _finite(p.grad):
            return f"gradient of {name}"
    return "none found on a second pass (non-deterministic overflow?)"


def _nonfinite(loss, aux, model) -> str | None:
    """What is not finite after a backward pass, or None; one device sync when all is well."""
    grads = [(n, p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad)
             for n, p in model.named_parameters() if p.grad is not None]
    checks = [loss.detach().reshape(1), *([aux.detach().reshape(1)] if aux is not None else [])]
    if bool(torch.isfinite(torch.cat(checks)).all()) and \
            bool(torch.stack([torch.isfinite(g).all() for _, g in grads]).all() if grads else True):
        return None
    if not torch.isfinite(loss):
        return f"loss is {loss.item()}"
    if aux is not None and not torch.isfinite(aux):
        return f"auxiliary loss is {aux.item()}"
    return next(f"gradient of {n} is not finite" for n, g in grads if not torch.isfinite(g).all())


@dataclass
class TrainResult:
    steps: int
    train_seconds: float
    eval: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    checkpoint: str | None = None
    skipped_batches: int = 0


def loss_and_acc(model, inputs, labels):
    """Cross entropy and accuracy at labelled positions (the head is computed there only)."""
    mask = labels != -100
    out = model(inputs, logits_at=mask)
    target = labels[mask]
    loss = F.cross_entropy(out.logits.float(), target)
    acc = (out.logits.argmax(-1) == target).float().mean()
    return loss, acc, out.aux_loss


@torch.no_grad()
def evaluate(model, batches: list[Batch]) -> dict:
    was = model.training
    model.eval()
    n = correct = 0
    loss_sum = 0.0
    for inputs, labels in batches:
        mask = labels != -100
        logits = model(inputs, logits_at=mask).logits.float()
        target = labels[mask]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(-1) == target).sum().item()
        n += target.numel()
    model.train(was)
    loss = loss_sum / max(n, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "acc": correct / max(n, 1), "n": n}


def train(model, cfg: TrainConfig, batch_fn: Callable[[int], Batch], *, eval_batches: list[Batch] | None = None,
          out_dir: str | Path | None = None, meta: dict | None = None, resume: bool = False,
          desc: str = "train", files: dict[str, str] | None = None) -> TrainResult:
    """Train for cfg.steps (from the checkpoint's step with `resume`); `files` (name -> text) are written into
    every checkpoint beside the weights, e.g. the tokenizer.  Launched by torchrun with several processes, the
    model is wrapped in DDP or FSDP2 (cfg.parallel) and each process trains on its rows of every global batch
    (bmojo.train.dist)."""
    d = dist.setup(cfg.parallel, cfg.batch_size)
    out = Path(out_dir) if out_dir is not None else None
    ckpt = out / "checkpoint" if out is not None else None
    no_decay = no_decay_names(model)
    opt = make_optimizer(model, cfg)
    start = 0
    if resume and ckpt is not None and (ckpt.exists() or ckpt.with_name(".checkpoint.old").exists()):
        info = read_meta(ckpt)
        loaded, _ = load_checkpoint(ckpt)
        model.load_state_dict(loaded.state_dict())
        opt = make_optimizer(model, cfg)
        load_optimizer(opt, info["_path"], info)
        start = info["step"]
    net = model
    if d is not None:
        named = dist.named_optimizer_state(model, opt) if start else None
        net = dist.wrap(model, d)
        if d.mode == "fsdp":  # the parameters are now sharded: a new optimizer over them, given the loaded state
            opt = make_optimizer(net, cfg, no_decay)
            if named is not None:
                dist.load_full_optimizer(net, opt, named)
    main = d is None or d.main
    log = MetricsLog(out / "metrics.jsonl" if out is not None and main else None)
    bar = Progress(cfg.steps, desc, cfg.progress and main)
    history, result_eval, stopped = [], {}, False
    net.train()
    t_train, tokens, skipped = 0.0, 0, 0
    step = start

    def save(step_meta: dict) -> str | None:
        return _save(ckpt, model, net, opt, cfg, no_decay, {**step_meta, "train": cfg.to_dict(), **(meta or {})},
                     files, d)

    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        inputs, labels = batch_fn(step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        if d is not None:
            n_all = int((labels != -100).sum())
            inputs, labels = d.rows(inputs).to(d.device), d.rows(labels).to(d.device)
        loss, acc, aux = loss_and_acc(net, inputs, labels)
        scale = 1.0
        if d is not None:  # weight this rank's mean by its share of the labelled tokens: DDP/FSDP average ranks
            n_here = int((labels != -100).sum())
            scale = n_here * d.world / max(n_all, 1)
        opt.zero_grad(set_to_none=True)
        (loss * scale + aux if aux is not None else loss * scale).backward()
        bad = _nonfinite(loss, aux, net)
        if d is not None and d.any(bad is not None) and bad is None:
            bad = "non-finite values on another process"
        if bad is not None:
            if not cfg.skip_nonfinite:
                kept = f"; the last good checkpoint ({ckpt}) is kept" if ckpt is not None and ckpt.exists() else ""
                raise TrainingDiverged(f"step {step + 1}: {bad}; first non-finite tensor: "
                                       f"{first_nonfinite(net, inputs, labels)}{kept}. Lower --lr, or pass "
                                       "--skip-nonfinite true to skip such batches")
            opt.zero_grad(set_to_none=True)
            skipped += 1
            log.write(step=step + 1, skipped_nonfinite=skipped, reason=bad)
            continue
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        loss_v, acc_v = loss.item(), acc.item()
        if d is not None:  # the global batch's numbers, as one process would report them
            loss_v = d.all_sum(loss_v * n_here) / max(n_all, 1)
            acc_v = d.all_sum(acc_v * n_here) / max(n_all, 1)
        dt = time.perf_counter() - t0
        t_train += dt
        tokens += inputs.numel() * (d.world if d is not None else 1)
        done = step + 1
        row = None
        if done % cfg.log_every == 0 or done == cfg.steps:
            row = {"step": done, "loss": loss_v, "acc": acc_v, "lr": lr_at(step, cfg),
                   "tokens_per_s": tokens / max(t_train, 1e-9)}
            if aux is not None:
                row["aux_loss"] = aux.item() if d is None else d.all_sum(aux.item()) / d.world
        if eval_batches and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
            result_eval = evaluate(dist.unwrap(net) if d is None or d.mode == "ddp" else net,
                                   [(x.to(d.device), y.to(d.device)) for x, y in eval_batches] if d else eval_batches)
            row = {**(row or {"step": done}), **{f"eval_{k}": v for k, v in result_eval.items()}}
            stopped = cfg.target_acc is not None and result_eval["acc"] >= cfg.target_acc
        if row is not None:
            history.append(row)
            log.write(**row)
        bar.update(done, loss=loss_v, acc=acc_v, tok_s=int(tokens / max(t_train, 1e-9)),
                   **({"eval_acc": result_eval["acc"], "eval_ppl": result_eval["ppl"]} if result_eval else {}))
        if ckpt is not None and cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps and not stopped:
            save({"step": done})
        if stopped:
            break
    bar.close()
    steps_done = step + 1 if cfg.steps > start else start
    path = None
    if ckpt is not None:
        path = save({"step": steps_done, "eval": result_eval})
    return TrainResult(steps_done, t_train, result_eval, history, stopped, path, skipped)


def _save(ckpt, model, net, opt, cfg, no_decay, meta, files, d) -> str | None:
    """Write a checkpoint of full tensors: rank 0 writes, the others wait; FSDP2 gathers the shards first."""
    if ckpt is None:
        return None
    if d is None:
        return str(save_checkpoint(ckpt, model, meta, opt, files))
    if d.mode == "fsdp":
        msd, osd = dist.full_state(net, opt, d)
        if d.main:
            with torch.random.fork_rng():  # building the copy must not move the run's random state
                copy = type(model)(model.cfg)
            copy.load_state_dict(msd)
            opt_c = make_optimizer(copy, cfg, no_decay)
            dist.set_named_optimizer_state(copy, opt_c, osd)
            save_checkpoint(ckpt, copy, meta, opt_c, files)
    elif d.main:
        save_checkpoint(ckpt, model, meta, opt, files)
    d.barrier()
    return str(ckpt)
