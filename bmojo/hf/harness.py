"""lm-evaluation-harness on bmojo checkpoints: the checkpoint goes in as `BMojoForCausalLM` through
lm-eval's own HF model type (`HFLM`), with its tokenizer, so every lm-eval task runs unchanged.

    from bmojo.hf.harness import evaluate
    results = evaluate("runs/train/stdlib-bmojo/checkpoint", ["hellaswag"])            # installed tasks
    results = evaluate(ckpt, ["my_task"], include_path="my_tasks/")                     # your YAML tasks

The same from the shell: `bmojo eval harness --checkpoint C --tasks T [--include-path P]`.  Needs the `hf`
and `eval` extras (transformers, lm-eval).  bmojo models take unpadded batches, so generation tasks run
with batch size 1; log-likelihood tasks batch freely.
"""
from __future__ import annotations

from pathlib import Path


def harness_model(checkpoint: str | Path, batch_size: int = 1, device: str = "cpu"):
    """An lm-eval `HFLM` over the checkpoint's model and tokenizer."""
    from lm_eval.models.huggingface import HFLM

    from bmojo.hf.export import hf_tokenizer
    from bmojo.hf.modeling import BMojoForCausalLM
    from bmojo.train.checkpoint import load_lm_checkpoint

    model, _, tok = load_lm_checkpoint(checkpoint, device=device)
    tok = hf_tokenizer(tok)
    return HFLM(pretrained=BMojoForCausalLM.from_bmojo(model).eval(), tokenizer=tok, batch_size=batch_size,
                device=device, max_length=model.cfg.max_seq_len)


def evaluate(checkpoint: str | Path, tasks: list[str], *, include_path: str | Path | None = None,
             limit: int | float | None = None, num_fewshot: int | None = None, batch_size: int = 1,
             device: str = "cpu", bootstrap_iters: int = 0) -> dict:
    """lm-eval's `simple_evaluate` on the checkpoint; returns its results dict."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path)) if include_path is not None else TaskManager()
    unknown = sorted(set(tasks) - set(manager.all_tasks))
    if unknown:  # before the model is loaded or a document read
        raise ValueError(f"--tasks: unknown lm-eval task(s) {unknown}; `lm-eval ls tasks` lists them (or give "
                         "--include-path for your own)")
    return simple_evaluate(model=harness_model(checkpoint, batch_size, device), tasks=list(tasks),
                           task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                           bootstrap_iters=bootstrap_iters, log_samples=False)
