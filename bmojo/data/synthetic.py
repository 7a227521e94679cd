"""Synthetic recall tasks: typed configs and seeded generators (an explicit numpy Generator, no global seed).

Every generator returns (inputs, labels), both (batch, seq_len) int64; labels are -100 where nothing is
asked, and label[t] is the answer the model must give *at* position t (next-token convention).

- mqar: Zoology's multi-query associative recall.  Keys from 1 .. V/2-1 and values from V/2 .. V-1 (each at
  most once per sequence) as `k v k v ...` at the start; each key is queried once, at position
  query_start + 2*gap with gaps drawn without replacement from a power law p(g) ~ a g^(a-1); the label at
  the query is its value; every other position is a random token (random_non_queries).  `query_start`
  (default: right after the pairs, as in Zoology) puts queries far from the pairs, beyond a window.
- in_context_recall / noisy_in_context_recall / fuzzy_in_context_recall / selective_copying: the MAD
  recall tasks (Poli et al. 2024), described on each function.
- passkey: a needle `[NEEDLE] d1 .. dn` planted at a chosen depth in random filler, asked at the end with
  `[QUERY] d1 .. dn` (labels on the digits).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from bmojo.config import ConfigError, _f, checked_kwargs

IGNORE = -100
FILLERS = ("random", "markov", "phrase")
MARKOV_STAY = 0.9  # markov filler: probability of the fixed successor (else a uniform token)
PHRASE_LEN = 16  # phrase filler: length of the repeated phrase


class _TaskConfig:
    name: str

    def _need(self, ok: bool, fld: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{type(self).__name__}.{fld}={getattr(self, fld)!r}: {msg}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MQARConfig(_TaskConfig):
    vocab_size: int = _f(256, "vocabulary size V (keys 1..V/2-1, values V/2..V-1)")
    seq_len: int = _f(64, "sequence length")
    num_kv_pairs: int = _f(8, "key-value pairs per sequence (each queried once)")
    power_a: float = _f(0.01, "power-law exponent a of the query gaps (smaller = queries nearer query_start)")
    query_start: int | None = _f(None, "first position a query may take; None = right after the pairs")
    random_non_queries: bool = _f(True, "fill every other position with filler tokens (else 0)")
    filler: str = _f("random", f"what fills the other positions, one of {FILLERS}: random = uniform over the "
                               "vocabulary; markov = a fixed low-entropy Markov chain; phrase = one fixed phrase "
                               "repeated (a predictable source, so that a surprising token carries information)")
    name = "mqar"

    def __post_init__(self):
        P = self.num_kv_pairs
        self._need(self.filler in FILLERS, "filler", f"allowed: {FILLERS}")
        self._need(self.num_kv_pairs > 0, "num_kv_pairs", "must be positive")
        self._need(self.vocab_size // 2 - 1 >= P, "vocab_size",
                   f"too small for {P} pairs: keys come from 1 .. V/2-1, so V must be >= {2 * P + 2}")
        self._need(4 * P <= self.seq_len, "num_kv_pairs",
                   f"more pairs than fit: {P} pairs and their {P} queries need seq_len >= {4 * P}, got {self.seq_len}")
        start = self.start
        self._need(start >= 2 * P, "query_start", f"must be >= 2*num_kv_pairs = {2 * P} (after the pairs)")
        self._need(self.power_a > 0, "power_a", "must be > 0")
        self._need((self.seq_len - start) // 2 >= P, "num_kv_pairs",
                   f"more pairs than fit: {P} queries need {2 * P} positions after query_start={start}, "
                   f"seq_len={self.seq_len} leaves {self.seq_len - start}")

    @property
    def start(self) -> int:
        return self.query_start if self.query_start is not None else 2 * self.num_kv_pairs


def filler_tokens(kind: str, batch: int, T: int, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """(batch, T) filler from [lo, hi).  `random`: uniform.  `markov`: token t+1 is succ[token t] with probability
    MARKOV_STAY, else uniform, for one fixed permutation succ of [lo, hi) (the same in every sequence: a source a
    model can learn to predict).  `phrase`: one fixed phrase of PHRASE_LEN tokens repeated from a random offset."""
    n = hi - lo
    if kind == "random":
        return rng.integers(lo, hi, (batch, T))
    fixed = np.random.default_rng([n, 8209])  # the source is a function of its range only, never of the data seed
    if kind == "phrase":
        phrase = fixed.integers(lo, hi, PHRASE_LEN)
        offset = rng.integers(0, PHRASE_LEN, (batch, 1))
        return phrase[(offset + np.arange(T)[None]) % PHRASE_LEN]
    if kind != "markov":
        raise ValueError(f"filler must be one of {FILLERS}, got {kind!r}")
    succ = fixed.permutation(n)
    out = np.empty((batch, T), dtype=np.int64)
    jump, uniform = rng.random((batch, T)) >= MARKOV_STAY, rng.integers(0, n, (batch, T))
    cur = uniform[:, 0]
    out[:, 0] = cur
    for t in range(1, T):  # T steps of (batch,) numpy ops: cheap beside training
        cur = np.where(jump[:, t], uniform[:, t], succ[cur])
        out[:, t] = cur
    return out + lo


def _distinct(rng: np.random.Generator, lo: int, hi: int, batch: int, n: int) -> np.ndarray:
    """(batch, n) distinct integers per row from [lo, hi)."""
    return np.argsort(rng.random((batch, hi - lo)), axis=1)[:, :n] + lo


def mqar(cfg: MQARConfig, batch: int, rng: np.random.Generator):
    V, T, P = cfg.vocab_size, cfg.seq_len, cfg.num_kv_pairs
    keys = _distinct(rng, 1, V // 2, batch, P)
    values = _distinct(rng, V // 2, V, batch, P)
    inputs = filler_tokens(cfg.filler, batch, T, 0, V, rng) if cfg.random_non_queries \
        else np.zeros((batch, T), dtype=np.int64)
    inputs[:, 0:2 * P:2], inputs[:, 1:2 * P:2] = keys, values
    space = (T - cfg.start) // 2
    p = cfg.power_a * np.arange(1, space + 1) ** (cfg.power_a - 1)
    p /= p.sum()
    # gaps without replacement from p: Gumbel top-k on log p
    gaps = np.argsort(-(np.log(p)[None] + rng.gumbel(size=(batch, space))), axis=1)[:, :P]
    qpos = cfg.start + 2 * gaps
    rows = np.arange(batch)[:, None]
    inputs[rows, qpos] = keys
    labels = np.full((batch, T), IGNORE, dtype=np.int64)
    labels[rows, qpos] = values
    return torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(labels)


@dataclass
class RecallConfig(_TaskConfig):
    """MAD in-context recall family."""

    vocab_size: int = _f(64, "vocabulary size (keys, values, noise and a separator share it)")
    seq_len: int = _f(128, "sequence length")
    num_keys: int = _f(8, "distinct keys (and values) per sequence's key-value map")
    noise_frac: float = _f(0.0, "noisy variant: probability that a slot holds a noise token instead of a pair")
    max_len: int = _f(1, "fuzzy variant: keys and values are 1 .. max_len tokens long")
    name = "in_context_recall"

    def __post_init__(self):
        self._need(self.num_keys > 0, "num_keys", "must be positive")
        self._need(0 <= self.noise_frac < 1, "noise_frac", "must be in [0, 1)")
        self._need(self.max_len >= 1, "max_len", "must be >= 1")
        need = 2 * self.num_keys + (4 if self.noise_frac > 0 else 0)
        self._need(self.vocab_size >= need, "vocab_size", f"too small: keys and values need {need} tokens")
        self._need(self.seq_len >= 4 * self.max_len, "seq_len", f"must be >= {4 * self.max_len}")


def _recall(cfg: RecallConfig, batch: int, rng: np.random.Generator):
    """Pairs drawn from a per-sequence map key -> value, repeated; labels on value tokens of keys seen before.
    Keys use tokens [0, V_k), values [V_k, 2 V_k), noise the rest (noisy variant)."""
    K = cfg.num_keys
    Vk = min((cfg.vocab_size - (4 if cfg.noise_frac > 0 else 0)) // 2, max(K, cfg.vocab_size // 4))
    noise_lo = 2 * Vk
    T = cfg.seq_len
    inputs = np.zeros((batch, T), dtype=np.int64)
    labels = np.full((batch, T), IGNORE, dtype=np.int64)
    for b in range(batch):
        klen = rng.integers(1, cfg.max_len + 1, K)
        vlen = rng.integers(1, cfg.max_len + 1, K)
        keys = [rng.integers(0, Vk, n) for n in klen]
        vals = [rng.integers(Vk, 2 * Vk, n) for n in vlen]
        if cfg.max_len == 1:  # distinct single-token keys
            perm = rng.permutation(Vk)[:K]
            keys = [np.array([k]) for k in perm]
        seen, t = set(), 0
        while t < T:
            if cfg.noise_frac > 0 and rng.random() < cfg.noise_frac:
                inputs[b, t] = rng.integers(noise_lo, cfg.vocab_size)
                t += 1
                continue
            i = int(rng.integers(K))
            k, v = keys[i], vals[i]
            for tok in k:
                if t < T:
                    inputs[b, t] = tok
                    t += 1
            for j, tok in enumerate(v):
                if t < T:
                    inputs[b, t] = tok
                    if i in seen and t >= 1:  # answerable: predict this value token at the previous position
                        labels[b, t - 1] = tok
                    t += 1
            seen.add(i)
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def in_context_recall(cfg: RecallConfig, batch: int, rng: np.random.Generator):
    return _recall(RecallConfig(**{**cfg.to_dict(), "noise_frac": 0.0, "max_len": 1}), batch, rng)


def noisy_in_context_recall(cfg: RecallConfig, batch: int, rng: np.random.Generator):
    return _recall(RecallConfig(**{**cfg.to_dict(), "noise_frac": cfg.noise_frac or 0.2, "max_len": 1}), batch, rng)


def fuzzy_in_context_recall(cfg: RecallConfig, batch: int, rng: np.random.Generator):
    return _recall(RecallConfig(**{**cfg.to_dict(), "max_len": max(cfg.max_len, 3)}), batch, rng)


@dataclass
class CopyConfig(_TaskConfig):
    vocab_size: int = _f(16, "vocabulary size: 0 = blank, 1 = copy signal, 2.. = tokens to copy")
    seq_len: int = _f(64, "sequence length")
    num_tokens: int = _f(8, "tokens to copy, scattered among blanks before the signal")
    name = "selective_copying"

    def __post_init__(self):
        self._need(self.vocab_size >= 3, "vocab_size", "must be >= 3")
        self._need(self.num_tokens > 0, "num_tokens", "must be positive")
        self._need(self.seq_len >= 2 * self.num_tokens, "num_tokens",
                   f"more tokens than fit: need seq_len >= {2 * self.num_tokens}")


def selective_copying(cfg: CopyConfig, batch: int, rng: np.random.Generator):
    """MAD selective copying: n tokens at random positions among blanks, then the signal, then the tokens
    again in order (teacher forced); labels ask for each of them, starting at the signal."""
    T, n = cfg.seq_len, cfg.num_tokens
    ctx = T - n  # context [0, ctx), the signal at ctx, then tokens 1 .. n-1 teacher forced
    inputs = np.zeros((batch, T), dtype=np.int64)
    labels = np.full((batch, T), IGNORE, dtype=np.int64)
    toks = rng.integers(2, cfg.vocab_size, (batch, n))
    pos = np.sort(np.argsort(rng.random((batch, ctx)), axis=1)[:, :n], axis=1)
    rows = np.arange(batch)[:, None]
    inputs[rows, pos] = toks
    inputs[:, ctx] = 1
    inputs[:, ctx + 1:] = toks[:, :-1] if n > 1 else inputs[:, ctx + 1:]
    labels[:, ctx:ctx + n] = toks
    return torch.from_numpy(inputs), torch.from_numpy(labels)


@dataclass
class PasskeyConfig(_TaskConfig):
    vocab_size: int = _f(64, "vocabulary size: 0 = needle marker, 1 = query marker, 2..11 = digits, rest filler")
    seq_len: int = _f(256, "sequence length")
    digits: int = _f(4, "passkey length")
    depth: float | None = _f(None, "needle position as a fraction of the context (None = uniform at random)")
    filler: str = _f("random", f"the haystack, one of {FILLERS} (as mqar's filler), over tokens 12 .. V-1")
    name = "passkey"

    def __post_init__(self):
        self._need(self.vocab_size >= 13, "vocab_size", "must be >= 13 (markers, ten digits, filler)")
        self._need(self.filler in FILLERS, "filler", f"allowed: {FILLERS}")
        self._need(self.digits > 0, "digits", "must be positive")
        self._need(self.seq_len >= 2 * self.digits + 2, "seq_len", f"must be >= {2 * self.digits + 2}")
        self._need(self.depth is None or 0 <= self.depth <= 1, "depth", "must be in [0, 1] or None")


def passkey(cfg: PasskeyConfig, batch: int, rng: np.random.Generator):
    T, n = cfg.seq_len, cfg.digits
    inputs = filler_tokens(cfg.filler, batch, T, 12, cfg.vocab_size, rng)
    labels = np.full((batch, T), IGNORE, dtype=np.int64)
    key = rng.integers(2, 12, (batch, n))
    room = T - 2 * n  # needle starts 0 .. room-1 end before the query marker at T-n
    start = rng.integers(0, room, batch) if cfg.depth is None else np.full(batch, int(round(cfg.depth * (room - 1))))
    rows = np.arange(batch)[:, None]
    inputs[rows[:, 0], start] = 0
    inputs[rows, start[:, None] + 1 + np.arange(n)] = key
    q = T - n
    inputs[:, q] = 1
    inputs[:, q + 1:] = key[:, :-1] if n > 1 else inputs[:, q + 1:]
    labels[:, q:q + n] = key
    return torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(labels)


TASKS = {
    "mqar": (MQARConfig, mqar),
    "in_context_recall": (RecallConfig, in_context_recall),
    "noisy_in_context_recall": (RecallConfig, noisy_in_context_recall),
    "fuzzy_in_context_recall": (RecallConfig, fuzzy_in_context_recall),
    "selective_copying": (CopyConfig, selective_copying),
    "passkey": (PasskeyConfig, passkey),
}


def make_task(name: str, **options):
    """-> (config, generate(batch, rng)).  Unknown tasks and options are errors naming them."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; allowed: {sorted(TASKS)}")
    cls, fn = TASKS[name]
    cfg = cls(**checked_kwargs(cls, options, f"task {name!r}"))
    return cfg, (lambda batch, rng: fn(cfg, batch, rng))


def batch_stream(gen, batch: int, seed: int):
    """A pure function step -> batch: the data of step s depends only on (seed, s), so resumed runs match."""
    def at(step: int):
        return gen(batch, np.random.default_rng([seed, step]))
    return at
