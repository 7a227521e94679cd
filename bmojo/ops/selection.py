"""Eidetic memory: which tokens to keep (scores) and the chunk-wise memory update.

Scores (higher = more worth keeping), for tokens u (B, T, D) at absolute positions `pos` (T,):
  innovation  s_t = ||u_t - P f_{t-1}||^2 / D      (the SSM could not predict the token)
  norm        the same with P = I
  random      a fixed hash of the position (same in every mode and run)
  recency     the position itself (no test: the most recent tokens are kept)

Memory update, once per chunk of C tokens: candidates are the memory plus the chunk's tokens; `topk` keeps
the M with the highest priority, where memory priorities are multiplied by `decay` at every update
(priority = s_j * decay^(age in chunks)); `fifo` keeps the top-k of each chunk for M/k chunks.
Entries are tracked by (priority, position, src), where src indexes the caller's key/value table;
empty slots have priority -inf and position -1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SELECTORS = ("innovation", "norm", "random", "recency")
MEMORY_RULES = ("topk", "fifo")


def innovation_scores(u, f_prev, P=None):
    """u, f_prev (B, T, D); P (D, D) or None for the identity -> (B, T)."""
    pred = f_prev if P is None else f_prev @ P.t()
    return (u - pred).pow(2).mean(-1)


def position_scores(kind: str, pos: torch.Tensor, batch: int, seed: int = 0) -> torch.Tensor:
    """`random` or `recency` scores for positions pos (T,) -> (batch, T) float32."""
    if kind == "recency":
        s = pos.to(torch.float32)
    elif kind == "random":  # integer hash of (position, seed): uniform in [0, 1), reproducible everywhere
        h = (pos.to(torch.int64) * 2654435761 + (seed + 1) * 40503) % 4294967296
        h = (h ^ (h >> 15)) * 2246822519 % 4294967296
        s = (h ^ (h >> 13)).to(torch.float32) / 4294967296.0
    else:
        raise ValueError(f"position_scores: kind must be 'random' or 'recency', got {kind!r}")
    return s.unsqueeze(0).expand(batch, -1)


@dataclass
class Entries:
    """A set of memory entries or candidates: prio (B, n) float, pos (B, n) long, src (B, n) long."""

    prio: torch.Tensor
    pos: torch.Tensor
    src: torch.Tensor

    @staticmethod
    def empty(batch: int, n: int, device, dtype=torch.float32) -> "Entries":
        return Entries(torch.full((batch, n), float("-inf"), device=device, dtype=dtype),
                       torch.full((batch, n), -1, device=device, dtype=torch.long),
                       torch.full((batch, n), -1, device=device, dtype=torch.long))

    def cat(self, other: "Entries") -> "Entries":
        return Entries(torch.cat([self.prio, other.prio], 1), torch.cat([self.pos, other.pos], 1),
                       torch.cat([self.src, other.src], 1))

    def take(self, idx: torch.Tensor) -> "Entries":
        return Entries(self.prio.gather(1, idx), self.pos.gather(1, idx), self.src.gather(1, idx))

    def slice(self, a: int, b: int) -> "Entries":
        return Entries(self.prio[:, a:b], self.pos[:, a:b], self.src[:, a:b])


def top(prio: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest priorities along dim 1, ties going to the lower index (an older entry): the
    same on every device (`topk` breaks ties differently on CPU and CUDA, and equal scores are common, e.g.
    `norm` scores of repeated tokens)."""
    return prio.argsort(dim=1, descending=True, stable=True)[:, :k]


def memory_update(mem: Entries, cand: Entries, *, rule: str = "topk", decay: float = 1.0,
                  per_chunk: int = 1, evicted: bool = False):
    """One chunk's update.  mem has M slots; cand holds the chunk's C tokens in position order.  With
    `evicted`, returns (memory, the pool entries that lost: dropped memory entries and candidates that did not
    get in; empty slots among them have position -1), the entries the long-term store receives."""
    M = mem.prio.shape[1]
    if rule not in MEMORY_RULES:
        raise ValueError(f"memory rule must be one of {MEMORY_RULES}, got {rule!r}")
    if M == 0:
        return (mem, cand) if evicted else mem
    if rule == "topk":
        pool = Entries(mem.prio * decay, mem.pos, mem.src).cat(cand)
        order = top(pool.prio, pool.prio.shape[1])
        kept = pool.take(order[:, :M])
        return (kept, pool.take(order[:, M:])) if evicted else kept
    k = min(per_chunk, cand.prio.shape[1])  # fifo
    order = top(cand.prio, cand.prio.shape[1])
    kept = mem.slice(k, M).cat(cand.take(order[:, :k]))
    return (kept, mem.slice(0, k).cat(cand.take(order[:, k:]))) if evicted else kept


@torch.no_grad()
def select_memory(scores, *, start: int, chunk: int, mem: Entries, pending: Entries, src_offset: int,
                  rule: str = "topk", decay: float = 1.0, per_chunk: int = 1, evictions: list | None = None):
    """Run the chunk loop over new tokens at positions start .. start+T-1 with scores (B, T); token t has
    src index src_offset + t.  `pending` holds the candidates of the unfinished chunk (positions
    start - start % chunk .. start-1).  Returns (blocks, mem, pending): blocks.pos/src (B, nb, M) is the
    memory each aligned query block sees (as it stood after the previous chunk).  A list `evictions` receives
    each completed update's lost entries (see memory_update), in block order."""
    Bsz, T = scores.shape
    dev = scores.device
    a0 = start - start % chunk
    nb = (start % chunk + T + chunk - 1) // chunk
    pos = torch.arange(start, start + T, device=dev).expand(Bsz, T)
    new = Entries(scores.float(), pos, pos - start + src_offset)
    seen, t = [], 0
    for b in range(nb):
        seen.append(mem)
        end = a0 + (b + 1) * chunk
        n = min(end - start, T) - t
        pending = pending.cat(new.slice(t, t + n))
        t += n
        if start + t == end:
            if evictions is None:
                mem = memory_update(mem, pending, rule=rule, decay=decay, per_chunk=per_chunk)
            else:
                mem, lost = memory_update(mem, pending, rule=rule, decay=decay, per_chunk=per_chunk, evicted=True)
                evictions.append(lost)
            pending = pending.slice(0, 0)
    blocks = Entries(*(torch.stack([getattr(m, f) for m in seen], 1) for f in ("prio", "pos", "src")))
    return blocks, mem, pending
