"""The eidetic memory update: which tokens each query block sees, as one op (reference + loop-free fast path).

Candidates are tokens with a score (higher = more worth keeping).  Once per chunk of C tokens (chunks aligned to
absolute multiples of C) the memory of M slots is updated:
  topk   keep the M candidates of highest priority among the memory and the chunk's tokens, where an entry's
         priority at the update after chunk a is  s_j * decay^(a - chunk_j)   (decay = 1: the score itself)
  fifo   keep the top-k tokens of each chunk for R = M/k chunks (slots ordered oldest chunk first)
Equal priorities go to the older position, so every device and every mode choose the same memory.

Why no loop is needed (topk): at each update every stored priority is multiplied by the same decay, so the order
of two entries never changes as they age, and comparing them at any update equals comparing the fixed keys
s_j * decay^(-chunk_j).  The memory after chunk b is therefore the best M of every candidate up to chunk b under
one fixed total order: rank every candidate once (one sort), keep each chunk's best min(M, C) (no other token of a
chunk can ever be in the memory), and take a prefix scan over chunks whose combine is "the M smallest ranks of
the union", which is associative (log2(chunks) tensor ops, none per chunk).  fifo is a sliding window over the
chunks' top-k lists (one unfold).  An entry stays in the memory for a contiguous run of updates, so the update at
which it leaves is where it entered plus the number of memories it appears in (one scatter-add).

Shapes: scores (B, T) for tokens at positions start .. start+T-1; memory: Entries with M slots (an empty slot has
score -inf, pos -1); pending: the n = start % C candidates of the unfinished chunk (positions start-n .. start-1).
`src` indexes the caller's key/value table: token t of `scores` has src src_offset + t.
The pool is [memory (M) | pending (n) | new (T)] and nb = ceil((n + T) / C) query blocks are aligned at start-n.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MEMORY_RULES = ("topk", "fifo")
_KEY_OFFSET = 160.0  # > -log2(smallest float32 subnormal) = 149: keeps sign(s) * (offset + log2|s|) sign-correct


@dataclass
class Entries:
    """Memory entries or candidates: score (B, n) float32, pos (B, n) long, src (B, n) long (-inf / -1 = empty)."""

    score: torch.Tensor
    pos: torch.Tensor
    src: torch.Tensor

    @staticmethod
    def empty(batch: int, n: int, device) -> "Entries":
        return Entries(torch.full((batch, n), float("-inf"), device=device),
                       torch.full((batch, n), -1, device=device, dtype=torch.long),
                       torch.full((batch, n), -1, device=device, dtype=torch.long))

    def cat(self, *others: "Entries") -> "Entries":
        parts = (self, *others)
        return Entries(*(torch.cat([getattr(p, f) for p in parts], -1) for f in ("score", "pos", "src")))

    def take(self, idx: torch.Tensor) -> "Entries":
        """idx (B, ...) into the last dim -> Entries of idx's shape."""
        flat = idx.reshape(idx.shape[0], -1)
        return Entries(*(getattr(self, f).gather(1, flat).view(idx.shape) for f in ("score", "pos", "src")))

    def slice(self, a: int, b: int) -> "Entries":
        return Entries(self.score[..., a:b], self.pos[..., a:b], self.src[..., a:b])


@dataclass
class EideticOut:
    """blocks (B, nb, M): the memory each query block sees (as it stood after the previous chunk);
    memory (B, M): after the last complete chunk; pending: the unfinished chunk's candidates;
    pool (B, M + n + T): [memory | pending | new] as given; evicted_at (B, M + n + T) long: the update (0-based
    block index of this call) that dropped each pool entry, -1 if none did (still kept, pending, or empty)."""

    blocks: Entries
    memory: Entries
    pending: Entries
    pool: Entries
    evicted_at: torch.Tensor


def _check(scores, start, chunk, memory, pending, rule, decay, per_chunk):
    if rule not in MEMORY_RULES:
        raise ValueError(f"memory rule must be one of {MEMORY_RULES}, got {rule!r}")
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"memory decay must be in (0, 1], got {decay}")
    n, M = pending.pos.shape[-1], memory.pos.shape[-1]
    if n != start % chunk:
        raise ValueError(f"pending holds {n} candidates, but a call starting at {start} with chunk {chunk} "
                         f"needs {start % chunk}")
    if rule == "fifo" and M and (per_chunk > chunk or M % per_chunk):
        raise ValueError(f"fifo: per_chunk={per_chunk} must be <= chunk={chunk} and divide memory size {M}")


# ---- reference -----------------------------------------------------------------------------------------------
@torch.no_grad()
def eidetic_memory_ref(scores, *, start, chunk, memory, pending, src_offset, rule="topk", decay=1.0, per_chunk=1):
    """Readable reference: per batch row, a loop over chunks on Python lists, priorities written out in float64
    and Python sorts; it shares no computation with the fast path.  Same signature and outputs."""
    _check(scores, start, chunk, memory, pending, rule, decay, per_chunk)
    Bsz, T = scores.shape
    M, n = memory.pos.shape[-1], pending.pos.shape[-1]
    a0, nb, n_done = start - n, -(-(n + T) // chunk), (n + T) // chunk
    rows = {"blocks": [], "memory": [], "pending": [], "pool": [], "evicted_at": []}
    for row in range(Bsz):
        def entries(e: Entries, off=None):
            return [(float(s), int(p), int(r)) for s, p, r in zip(e.score[row], e.pos[row], e.src[row])]
        pool = entries(memory) + entries(pending) + [(float(scores[row, t]), start + t, src_offset + t)
                                                     for t in range(T)]
        evicted_at = [-1] * len(pool)
        mem, blocks = list(range(M)), []  # pool indices held, in slot order
        for b in range(nb):
            blocks.append([pool[j] for j in mem])
            if b >= n_done:
                break
            chunk_idx = [M + t for t in range(b * chunk, (b + 1) * chunk)]
            kept, lost = _ref_update(pool, mem, chunk_idx, a0 // chunk + b, chunk, rule, decay, per_chunk)
            for j in lost:
                if pool[j][1] >= 0:
                    evicted_at[j] = b
            mem = kept
        rows["blocks"].append(blocks)
        rows["memory"].append([pool[j] for j in mem])
        rows["pending"].append(pool[M + n_done * chunk:])
        rows["pool"].append(pool)
        rows["evicted_at"].append(evicted_at)
    dev = scores.device
    as_entries = lambda x, shape: _ref_entries(x, shape, dev)
    N = M + n + T
    return EideticOut(as_entries(rows["blocks"], (Bsz, nb, M)), as_entries(rows["memory"], (Bsz, M)),
                      as_entries(rows["pending"], (Bsz, N - M - n_done * chunk)), as_entries(rows["pool"], (Bsz, N)),
                      torch.tensor(rows["evicted_at"], dtype=torch.long, device=dev).view(Bsz, N))


def _ref_update(pool, mem, chunk_idx, a, chunk, rule, decay, per_chunk):
    """One update of the reference at the end of absolute chunk `a`: pool indices (memory `mem` in slot order,
    the chunk's `chunk_idx`) -> (kept in slot order, lost)."""
    M = len(mem)

    def prio(j):  # (priority at this update, older first on ties): sort ascending
        s, p, _ = pool[j]
        return (math.inf, 0) if p < 0 else (-s * decay ** (a - p // chunk), p)
    if rule == "topk":
        ranked = sorted(mem + chunk_idx, key=prio)
        return ranked[:M], ranked[M:]
    k = per_chunk if M else 0
    ranked = sorted(chunk_idx, key=prio)
    return mem[k:] + ranked[:k], mem[:k] + ranked[k:]


def _ref_entries(x, shape, dev) -> Entries:
    """Per row, lists (or lists of lists, for blocks) of (score, pos, src) -> Entries of `shape`."""
    flat = [e for r in x for e in r] if len(shape) == 2 else [e for r in x for blk in r for e in blk]
    col = [list(c) for c in zip(*flat)] if flat else [[], [], []]
    return Entries(torch.tensor(col[0], dtype=torch.float32, device=dev).view(shape),
                   torch.tensor(col[1], dtype=torch.long, device=dev).view(shape),
                   torch.tensor(col[2], dtype=torch.long, device=dev).view(shape))


# ---- fast path -----------------------------------------------------------------------------------------------
def _pool(scores, start, memory, pending, src_offset):
    Bsz, T = scores.shape
    pos = torch.arange(start, start + T, device=scores.device).expand(Bsz, T)
    return memory.cat(pending, Entries(scores.float(), pos, pos - start + src_offset))


def _finish(pool, blocks, final, n_done, chunk, M, evicted_at):
    """Pool indices (N = empty) -> EideticOut."""
    Bsz, N = pool.pos.shape
    ext = pool.cat(Entries.empty(Bsz, 1, pool.pos.device))  # index N: an empty slot
    return EideticOut(ext.take(blocks), ext.take(final), pool.slice(M + n_done * chunk, N), pool, evicted_at)


def priority_key(score: torch.Tensor, pos: torch.Tensor, chunk: int, decay: float) -> torch.Tensor:
    """The fixed key s * decay^(-chunk_j), as an order-preserving float64 (no overflow at any length):
    sign(s) * (offset + log2|s| - chunk_j * log2(decay)); empty entries (pos < 0) get -inf."""
    s = score.double()
    if decay < 1.0:
        mag = torch.log2(s.abs()) - (pos // chunk).double() * math.log2(decay)
        s = torch.where(s == 0, s, torch.sign(s) * (_KEY_OFFSET + mag))
    return s.masked_fill(pos < 0, float("-inf"))


@torch.no_grad()
def eidetic_memory(scores, *, start, chunk, memory, pending, src_offset, rule="topk", decay=1.0, per_chunk=1):
    """Fast path, no loop over chunks or tokens (see the module docstring); same signature as the reference."""
    _check(scores, start, chunk, memory, pending, rule, decay, per_chunk)
    Bsz, T = scores.shape
    M, n = memory.pos.shape[-1], pending.pos.shape[-1]
    pool = _pool(scores, start, memory, pending, src_offset)
    N, dev = pool.pos.shape[-1], scores.device
    C, nb, n_done = chunk, -(-(n + T) // chunk), (n + T) // chunk
    if M == 0 or nb == 0:
        final = torch.arange(M, device=dev).expand(Bsz, M)
        blocks = final[:, None].expand(Bsz, nb, M)
        ev = torch.full((Bsz, N), -1, dtype=torch.long, device=dev)
        ev[:, M:M + n_done * C] = (torch.arange(n_done * C, device=dev) // C)[None]
        return _finish(pool, blocks, final, n_done, C, M, ev.masked_fill(pool.pos < 0, -1))
    # 1. one total order: rank 0 is the best entry (fixed key descending, ties to the pool's order = older)
    order = priority_key(pool.score, pool.pos, C, decay).argsort(dim=1, descending=True, stable=True)  # (B, N)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(N, device=dev).expand(Bsz, N))
    stream = torch.nn.functional.pad(rank[:, M:], (0, nb * C - n - T), value=N).view(Bsz, nb, C)  # N: padding
    # 2. the memory after each update, as ranks: S[:, b + 1] after chunk b, S[:, 0] the given memory
    if rule == "topk":
        best = stream.topk(min(M, C), dim=-1, largest=False, sorted=True).values  # (B, nb, min(M, C))
        best = torch.nn.functional.pad(best, (0, M - best.shape[-1]), value=N)
        S = torch.cat([rank[:, None, :M].sort(-1).values, best], 1)  # (B, nb + 1, M)
        span = 1
        while span < nb + 1:  # inclusive prefix scan; combine = the M smallest ranks of the union
            earlier = torch.nn.functional.pad(S[:, :-span], (0, 0, span, 0), value=N)
            S = torch.cat([S, earlier], -1).topk(M, dim=-1, largest=False, sorted=True).values
            span *= 2
    else:  # fifo: slots are [given memory | each chunk's top-k, oldest first]; each memory is a window of M
        k = per_chunk
        best = stream.topk(k, dim=-1, largest=False, sorted=True).values.view(Bsz, nb * k)
        S = torch.cat([rank[:, :M], best], 1).unfold(1, M, k)  # (B, nb + 1, M)
    # 3. ranks -> pool indices; each entry leaves at (the update it first competes in) + (memories it is in)
    idx = torch.cat([order, order.new_full((Bsz, 1), N)], 1).gather(1, S.reshape(Bsz, -1)).view(S.shape)
    held = torch.zeros(Bsz, N + 1, dtype=torch.long, device=dev)
    held.scatter_add_(1, idx[:, 1:n_done + 1].reshape(Bsz, -1), torch.ones_like(idx[:, 1:n_done + 1]).view(Bsz, -1))
    first = torch.cat([torch.zeros(M, dtype=torch.long, device=dev), torch.arange(n + T, device=dev) // C])
    leave = first[None] + held[:, :N]
    evicted_at = torch.where((leave < n_done) & (pool.pos >= 0), leave, -1)
    return _finish(pool, idx[:, :nb], idx[:, n_done], n_done, C, M, evicted_at)
