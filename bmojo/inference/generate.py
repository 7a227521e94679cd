"""Generation: the prompt is prefilled in parallel mode, whose state is handed to `step` per token."""
from __future__ import annotations

from typing import Callable

import torch

from bmojo.inference.sampling import check_sampling, sample_next


@torch.no_grad()
def generate(model, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_token: int | None = None, callback: Callable[[torch.Tensor], None] | None = None,
             capacity: int | None = None, state=None, return_state: bool = False, step: Callable | None = None):
    """prompt (B, T) -> (B, T + n) with n <= max_new_tokens new tokens.

    temperature 0 is greedy; otherwise tokens are sampled (top_k / top_p filters) from a generator seeded
    with `seed`.  Generation stops early once every sequence has produced `stop_token` (sequences that
    stopped keep emitting `stop_token`).  `callback(tokens (B,))` is called for every new token; when it returns
True generation ends after that token (e.g. on Ctrl-C), with the returned state covering it.
    `capacity` sizes full-attention caches (default: prompt + max_new_tokens).  `state` continues a stream from
    an earlier decode state (for example a reloaded session with its long-term store, bmojo.memory.session);
    `return_state` also returns the state after every returned token (the last one fed to the model too).
    `step` is the decode step to call (default `model.step`): `bmojo.inference.compile_step(model)` gives a compiled
    one, faster per token once compiled, which costs seconds to minutes on a CPU the first time."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be (B, T) with T >= 1, got {tuple(prompt.shape)}")
    check_sampling(temperature, top_k, top_p)
    was_training = model.training
    model.eval()
    gen = None
    if seed is not None:
        gen = torch.Generator(device=prompt.device)
        gen.manual_seed(seed)
    B, T = prompt.shape
    if state is None:
        state = model.init_state(B, prompt.device, capacity=capacity or max(T + max_new_tokens, 1))
    out = model(prompt, state, return_state=True)
    logits, state = out.logits[:, -1], out.state
    tokens = [prompt]
    done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    step = step if step is not None else model.step
    for n in range(max_new_tokens):
        nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
        if stop_token is not None:
            nxt = torch.where(done, torch.full_like(nxt, stop_token), nxt)
            done |= nxt == stop_token
        tokens.append(nxt[:, None])
        halt = bool(callback(nxt)) if callback is not None else False
        if halt or bool(done.all()) or n == max_new_tokens - 1:
            break
        logits, state = step(nxt, state)
    if return_state and len(tokens) > 1:  # the state covers every token returned, the last one too
        state = step(tokens[-1][:, 0], state)[1]
    model.train(was_training)
    out = torch.cat(tokens, dim=1)
    return (out, state) if return_state else out
