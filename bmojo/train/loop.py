"""The one training loop used by every command.

`batch_fn(step) -> (inputs (B, T) long, labels (B, T) long)` must be a pure function of the step (seeded
generators), so that a resumed run sees exactly the data an uninterrupted one would.  Labels are -100
where nothing is asked; the LM head runs only at labelled positions.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from bmojo.config import ConfigError
from bmojo.train.checkpoint import check_file, has_checkpoint, load_optimizer, load_weights, read_meta, read_optimizer, \
    save_checkpoint
from bmojo.train.config import TrainConfig
from bmojo.train import dist
from bmojo.train.optim import group_names, lr_at, make_optimizer, no_decay_names
from bmojo.train.progress import MetricsLog, Progress, TensorBoardLog
from bmojo.utils.interrupt import StopOnCtrlC

Batch = tuple[torch.Tensor, torch.Tensor]


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN/Inf; the message names the step and the first offending tensor."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: `step` optimizer steps are done and `checkpoint` (or None) holds the last saved one."""

    def __init__(self, message: str, step: int, checkpoint: str | None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint

    def __reduce__(self):  # it crosses process boundaries (a worker of `bmojo compare` interrupted)
        return type(self), (str(self), self.step, self.checkpoint)


# what a run folder holds that bmojo wrote: the run's files, and what `eval ppl` and `inspect` write beside them by
# default (results of the run being replaced, so --overwrite removes them too; anything else is the user's)
RUN_FILES = ("checkpoint", ".checkpoint.old", ".checkpoint.tmp", "metrics.jsonl", "result.json", "eval", "inspect")


def claim_run_folder(out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse a folder that holds a run (a checkpoint or metrics) unless `overwrite`, which removes that run's
    files first (so nothing of it is mixed with the new one)."""
    out = Path(out_dir)
    found = [n for n in RUN_FILES if (out / n).exists()]
    if not found:
        return
    if not overwrite:
        step = ""
        if has_checkpoint(out / "checkpoint"):
            try:
                step = f" (checkpoint at step {read_meta(out / 'checkpoint')['step']})"
            except Exception:  # an unreadable checkpoint is still a run not to overwrite
                step = " (an unreadable checkpoint)"
        raise ConfigError(f"{out} already holds a run{step}: {', '.join(found)}; pass --resume to continue it, "
                          "--overwrite to replace it, or choose another --out")
    for n in found:
        f = out / n
        shutil.rmtree(f) if f.is_dir() else f.unlink()


def _item(t: torch.Tensor) -> float:
    """A scalar tensor's value; a DTensor (FSDP2) is gathered first."""
    return float(t.full_tensor() if hasattr(t, "full_tensor") else t)


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
    already_done: bool = False  # a resume found the run finished: nothing was trained or written


def loss_and_acc(model, inputs, labels, masked_head: bool = True):
    """Cross entropy and accuracy at labelled positions.  masked_head: the head is computed there only; otherwise
    at every position and the unlabelled ones are ignored (the same numbers, and no data-dependent shape inside
    the model, which torch.compile would break its graph on)."""
    mask = labels != -100
    if masked_head:
        out = model(inputs, logits_at=mask)
        logits, target = out.logits, labels[mask]
    else:
        out = model(inputs)
        logits, target = out.logits[mask], labels[mask]
    loss = F.cross_entropy(logits.float(), target)
    acc = (logits.argmax(-1) == target).float().mean()
    return loss, acc, out.aux_loss


@torch.no_grad()
def evaluate(model, batches: list[Batch], open_store=None) -> dict:
    """Loss, perplexity and accuracy over the labelled positions of `batches`.  `open_store(rows)` -> an empty
    bmojo.memory.Store gives every batch a fresh long-term store (closed after it; the largest store's bytes on
    disk per sequence are reported as `store_bytes`)."""
    was = model.training
    model.eval()
    n = correct = 0
    loss_sum, store_bytes = 0.0, 0
    for inputs, labels in batches:
        mask = labels != -100
        if open_store is None:
            logits = model(inputs, logits_at=mask).logits.float()
        else:
            store = open_store(inputs.shape[0])
            try:
                state = model.init_state(inputs.shape[0], inputs.device, store=store)
                logits = model(inputs, state, return_state=True, logits_at=mask).logits.float()
                store.flush()
                store_bytes = max(store_bytes, store.info()["disk_bytes"] // store.rows)  # per sequence
            finally:
                store.close()
        target = labels[mask]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(-1) == target).sum().item()
        n += target.numel()
    model.train(was)
    loss = loss_sum / max(n, 1)
    out = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "acc": correct / max(n, 1), "n": n}
    return out if open_store is None else {**out, "store_bytes": store_bytes}


def train(model, cfg: TrainConfig, batch_fn: Callable[[int], Batch], *, eval_batches: list[Batch] | None = None,
          out_dir: str | Path | None = None, meta: dict | None = None, resume: bool = False,
          overwrite: bool = False, desc: str = "train", files: dict[str, str] | None = None) -> TrainResult:
    """Train for cfg.steps; `files` (name -> text) are written into every checkpoint beside the weights, e.g. the
    tokenizer.  An `out_dir` that holds a run is refused unless `resume` (continue from its checkpoint, or start
    if it has none yet; a finished run is left as it is) or `overwrite` (replace it).  Ctrl-C stops at the next
    step boundary, saves a checkpoint and raises TrainingInterrupted.  Launched by torchrun with several
    processes, the model is wrapped in DDP or FSDP2 (cfg.parallel) and each process trains on its rows of every
    global batch (bmojo.train.dist)."""
    d, ckpt = _setup(model, cfg, out_dir, resume, overwrite)
    no_decay = no_decay_names(model)  # read before any wrapping, which may drop the tags
    # 1. resume: the weights and the step to start from (the optimizer state is read once the optimizer exists)
    start, saved = _restore(model, ckpt, resume)
    if saved is not None and start >= cfg.steps:
        if start > cfg.steps:
            raise ConfigError(f"--resume: the checkpoint {saved['_path']} is at step {start}, past steps="
                              f"{cfg.steps}; steps may only grow")
        return TrainResult(start, 0.0, saved.get("eval", {}), checkpoint=saved["_path"], already_done=True)
    # 2. the distributed wrap, then the one optimizer over the parameters the steps update
    net, opt = _prepare(model, cfg, d, no_decay, saved)
    run = _Run(cfg, d, ckpt, desc, lambda step_meta: _save(ckpt, model, net, opt, cfg, no_decay,
                                                            {**step_meta, "train": cfg.to_dict(), **(meta or {})},
                                                            files, d), start if resume else None)
    net.train()
    step = start
    with StopOnCtrlC(d is None, "stopping after this step and saving a checkpoint") as ctrl_c:
        try:
            for step in range(start, cfg.steps):
                if ctrl_c.requested:  # step boundary: `step` steps are done
                    _stop_after(step, run, ckpt)
                # 3. one optimizer step (or a skipped batch)
                t0 = time.perf_counter()
                if hasattr(model, "set_progress"):  # schedules inside the model (the eidetic training pool's)
                    model.set_progress(step / max(cfg.steps, 1))
                done = _step(net, opt, cfg, d, batch_fn, step, ckpt, run)
                if done is None:
                    continue
                # 4. metrics, evaluation, checkpoints
                if run.after_step(step, done, time.perf_counter() - t0, net, eval_batches):
                    break
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:  # a second Ctrl-C (or one in a distributed run): the last saved checkpoint stays
            _stopped_during(step, run, ckpt)
    return run.finish(step + 1 if cfg.steps > start else start)


def _stop_after(step: int, run: "_Run", ckpt: Path | None):
    """Ctrl-C at a step boundary: save a checkpoint of the `step` steps done, and stop."""
    run.bar.close()
    path = run.save({"step": step}) if ckpt is not None else None
    raise TrainingInterrupted(f"stopped after step {step}" + (f"; checkpoint {path} (step {step})" if path else ""),
                              step, path)


def _stopped_during(step: int, run: "_Run", ckpt: Path | None):
    """A second Ctrl-C inside a step: stop, naming the last checkpoint saved (it stays as it was)."""
    run.bar.close()
    last = read_meta(ckpt)["step"] if ckpt is not None and has_checkpoint(ckpt) else None
    where = f"; the last checkpoint is {ckpt} (step {last})" if last is not None else "; no checkpoint saved"
    raise TrainingInterrupted(f"stopped during step {step + 1}{where}", step,
                              str(ckpt) if last is not None else None) from None


def _setup(model, cfg: TrainConfig, out_dir, resume: bool, overwrite: bool):
    """The process group (under torchrun), the run folder claimed, activation checkpointing switched on ->
    (the process group or None, the checkpoint folder or None)."""
    d = dist.setup(cfg.parallel, cfg.batch_size)
    if d is not None and (cfg.batch_size // d.world) % cfg.grad_accum:
        raise ConfigError(f"grad_accum={cfg.grad_accum}: must divide the {cfg.batch_size // d.world} rows each of the "
                          f"{d.world} processes gets of batch_size={cfg.batch_size}")
    ckpt = Path(out_dir) / "checkpoint" if out_dir is not None else None
    if ckpt is not None and not resume and (d is None or d.main):
        claim_run_folder(out_dir, overwrite)
    if cfg.checkpoint_activations:
        if not hasattr(model, "checkpoint_activations"):
            raise ConfigError(f"checkpoint_activations: {type(model).__name__} does not support it")
        model.checkpoint_activations = True
    return d, ckpt


def _restore(model, ckpt: Path | None, resume: bool) -> tuple[int, dict | None]:
    """With `resume` and a checkpoint: load its weights into `model` -> (its step, its metadata)."""
    if not (resume and ckpt is not None and has_checkpoint(ckpt)):
        return 0, None
    info = read_meta(ckpt)
    check_file(info, "model.safetensors")
    load_weights(model, Path(info["_path"]) / "model.safetensors")
    return info["step"], info


def _prepare(model, cfg: TrainConfig, d, no_decay: set[str], saved: dict | None):
    """-> (the module the steps call, its optimizer): DDP shares the model's parameters, so its optimizer is over
    the model; FSDP2 shards them, so its optimizer is over the shards.  A resumed run's state is loaded into it."""
    net = model if d is None else dist.wrap(model, d)
    sharded = d is not None and d.mode == "fsdp"
    opt = make_optimizer(net if sharded else model, cfg, no_decay)
    if saved is not None:
        if not sharded:
            load_optimizer(opt, saved["_path"], saved)
        else:
            groups = group_names(model, no_decay)
            named = read_optimizer(saved["_path"], saved, [n for g in groups for n in g])
            named["param_groups"] = [{**g, "params": names} for g, names in zip(named["param_groups"], groups)]
            dist.load_full_optimizer(net, opt, named)
    return net, opt


def _step(net, opt, cfg: TrainConfig, d, batch_fn, step: int, ckpt, run) -> dict | None:
    """Forward, backward, the non-finite check and the update of step `step` -> its loss and accuracy (the global
    batch's, as one process would report them), or None for a skipped batch.  With grad_accum N the batch runs as
    N micro-batches, each loss weighted by its share of the labelled tokens, so the update is the whole batch's."""
    inputs, labels = batch_fn(step)
    for g in opt.param_groups:
        g["lr"] = lr_at(step, cfg)
    n_all = int((labels != -100).sum())
    if d is not None:
        inputs, labels = d.rows(inputs).to(d.device), d.rows(labels).to(d.device)
    n_here = int((labels != -100).sum())
    # DDP/FSDP average the ranks' gradients: weight this rank by its share of the global batch's labelled tokens
    scale = n_here * (d.world if d is not None else 1) / max(n_all, 1)
    forward = run.forward(net)
    opt.zero_grad(set_to_none=True)
    loss = acc = aux = None
    for x, y in zip(inputs.chunk(cfg.grad_accum), labels.chunk(cfg.grad_accum)):
        with torch.autocast(x.device.type, torch.bfloat16, enabled=cfg.precision == "bf16-mixed"):
            l_i, a_i, aux_i = loss_and_acc(forward, x, y, masked_head=not cfg.compile)
        w = int((y != -100).sum()) / max(n_here, 1)
        aux_i = aux_i / cfg.grad_accum if aux_i is not None else None  # a mean per micro-batch of equal size
        (l_i * (w * scale) + aux_i if aux_i is not None else l_i * (w * scale)).backward()
        loss, acc = (l_i.detach() * w, a_i.detach() * w) if loss is None else (loss + l_i.detach() * w,
                                                                                acc + a_i.detach() * w)
        if aux_i is not None:
            aux = aux_i.detach() if aux is None else aux + aux_i.detach()
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
        run.skip(step, bad)
        return None
    # the norm before clipping (an infinite bound clips nothing): logged as grad_norm
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    opt.step()
    loss_v, acc_v = loss.item(), acc.item()
    if d is not None:
        loss_v = d.all_sum(loss_v * n_here) / max(n_all, 1)
        acc_v = d.all_sum(acc_v * n_here) / max(n_all, 1)
    return {"loss": loss_v, "acc": acc_v, "aux": aux, "grad_norm": grad_norm,
            "tokens": inputs.numel() * (d.world if d is not None else 1)}


def plateaued(curve: list[tuple[int, float]], delta: float) -> bool:
    """curve: (step, eval accuracy) in step order.  True when the best accuracy over the last quarter of the steps
    done is at most `delta` above the best before that quarter (an evaluation before it is needed)."""
    last = curve[-1][0]
    before = [a for s, a in curve if s <= 0.75 * last]
    after = [a for s, a in curve if s > 0.75 * last]
    return bool(before) and max(after) <= max(before) + delta


class _Run:
    """What a run writes as it goes: the metrics log, the progress line, evaluations, checkpoints."""

    def __init__(self, cfg: TrainConfig, d, ckpt, desc: str, save, resumed_at: int | None = None):
        main = d is None or d.main
        self.cfg, self.d, self.ckpt, self.save = cfg, d, ckpt, save
        self.log = MetricsLog(ckpt.parent / "metrics.jsonl" if ckpt is not None and main else None)
        if resumed_at is not None:  # rows past the checkpoint came from steps that are about to be redone
            self.log.keep_until(resumed_at)
        self.bar = Progress(cfg.steps, desc, cfg.progress and main)
        self.tb = TensorBoardLog(cfg.tensorboard) if cfg.tensorboard and main else None
        self._compiled = None
        self.history, self.eval, self.stopped, self.curve = [], {}, False, []
        self.t_train, self.tokens, self.skipped = 0.0, 0, 0
        self.t_start = time.perf_counter()

    def forward(self, net):
        """The module the training forward calls: `net`, or (cfg.compile) one torch.compile of it, kept."""
        if not self.cfg.compile:
            return net
        if self._compiled is None:  # BMOJO_COMPILE_BACKEND picks another backend, e.g. aot_eager to debug
            backend = os.environ.get("BMOJO_COMPILE_BACKEND")
            self._compiled = torch.compile(net, backend=backend) if backend else torch.compile(net)
        return self._compiled

    def skip(self, step: int, reason: str) -> None:
        self.skipped += 1
        self.log.write(step=step + 1, skipped_nonfinite=self.skipped, reason=reason)

    def after_step(self, step: int, r: dict, seconds: float, net, eval_batches) -> bool:
        """Log, evaluate and checkpoint after step `step`; True when the run should stop (target accuracy)."""
        cfg, d = self.cfg, self.d
        self.t_train += seconds
        self.tokens += r["tokens"]
        tok_s = self.tokens / max(self.t_train, 1e-9)
        done, row = step + 1, None
        if done % cfg.log_every == 0 or done == cfg.steps:
            row = {"step": done, "steps": cfg.steps, "loss": r["loss"], "acc": r["acc"], "lr": lr_at(step, cfg),
                   "tokens_per_s": tok_s, "grad_norm": _item(r["grad_norm"]),
                   "elapsed_s": round(time.perf_counter() - self.t_start, 3)}
            if r["aux"] is not None:  # read only when logged: one host sync less per step
                row["aux_loss"] = r["aux"].item() if d is None else d.all_sum(r["aux"].item()) / d.world
        if eval_batches and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
            self.eval = evaluate(dist.unwrap(net) if d is None or d.mode == "ddp" else net,
                                 [(x.to(d.device), y.to(d.device)) for x, y in eval_batches] if d else eval_batches)
            row = {**(row or {"step": done}), **{f"eval_{k}": v for k, v in self.eval.items()}}
            self.curve.append((done, self.eval["acc"]))
            self.stopped = (cfg.target_acc is not None and self.eval["acc"] >= cfg.target_acc) or \
                (cfg.plateau is not None and done >= cfg.plateau_min_steps and plateaued(self.curve, cfg.plateau))
        if row is not None:
            self.history.append(row)
            self.log.write(**row)
            if self.tb is not None:
                self.tb.write(row)
        self.bar.update(done, loss=r["loss"], acc=r["acc"], tok_s=int(tok_s),
                        **({"eval_acc": self.eval["acc"], "eval_ppl": self.eval["ppl"]} if self.eval else {}))
        if self.ckpt is not None and cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps \
                and not self.stopped:
            self.save({"step": done})
        return self.stopped

    def finish(self, steps_done: int) -> TrainResult:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
        path = self.save({"step": steps_done, "eval": self.eval}) if self.ckpt is not None else None
        return TrainResult(steps_done, self.t_train, self.eval, self.history, self.stopped, path, self.skipped)


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
