"""One typed, validated model config.  Every field's `help` is its CLI help; errors name the field."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields

from bmojo.ops.eidetic import MEMORY_RULES
from bmojo.layers.scorers import SELECTORS

LAYER_KINDS = {
    "A": "full causal attention",
    "S": "sliding-window attention",
    "M": "selective SSM (fading memory only)",
    "F": "B'MOJO-F: window + fading tokens under one softmax",
    "B": "B'MOJO: window + fading tokens + eidetic memory",
}
SSM_KINDS = ("mamba1", "mamba2")
GATE_READS = ("value", "logit")
GATE_INPUTS = ("x", "conv")
MEMORY_ROPES = ("own", "edge")
IMPLS = ("ref", "fast", "fused", "auto")


# Fields removed from ModelConfig -> the value every model behaved as (older configs and checkpoints still load):
# aux_loss_weight scaled the innovation predictor's loss, whose gradient reaches the predictor alone, so under AdamW it
# changed nothing but the global gradient norm that clipping sees.
RETIRED_FIELDS = {"aux_loss_weight": 1.0}


class ConfigError(ValueError):
    """A config field holds a value that is not allowed; the message names the field."""


def _f(default, help: str):
    """A dataclass field whose one-line doc is its CLI help."""
    return field(default=default, metadata={"help": help})


def _type_ok(value, typ: str) -> bool:
    """Whether a JSON value fits a dataclass field's annotation (written as a string: `from __future__`)."""
    kinds = [t.strip() for t in typ.replace("Optional[", "").rstrip("]").split("|")]
    for kind in kinds:
        if kind == "None" and value is None:
            return True
        if kind == "bool" and isinstance(value, bool):
            return True
        if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if kind == "str" and isinstance(value, str):
            return True
        if kind.startswith(("tuple", "list")) and isinstance(value, (list, tuple)) and \
                all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return True
        if kind == "dict" and isinstance(value, dict):
            return True
    return False


def checked_kwargs(cls, d: dict, owner: str | None = None) -> dict:
    """d, after checking that every key is a field of dataclass cls and every value has the field's type (the
    error names the unknown or mistyped fields)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{owner or cls.__name__}: expected a JSON object of fields, got {type(d).__name__}")
    types = {f.name: str(f.type) for f in fields(cls)}
    unknown = sorted(set(d) - set(types))
    if unknown:
        raise ConfigError(f"{owner or cls.__name__}: unknown field(s) {unknown}; known fields: {sorted(types)}")
    for k, v in d.items():
        if not _type_ok(v, types[k]):
            raise ConfigError(f"{owner or cls.__name__}: field {k}={v!r} has the wrong type; expected {types[k]}")
    return d


@dataclass
class ModelConfig:
    vocab_size: int = _f(256, "vocabulary size (token ids are 0 .. vocab_size-1)")
    d_model: int = _f(128, "model width D")
    n_layers: int = _f(2, "number of residual blocks")
    pattern: str = _f("B", "layer kinds, one letter per layer, tiled over n_layers: " +
                      ", ".join(f"{k}={v}" for k, v in LAYER_KINDS.items()))
    n_heads: int = _f(4, "attention query heads H (must divide d_model)")
    n_kv_heads: int | None = _f(None, "key/value heads for grouped-query attention (divides n_heads); None = n_heads")
    window: int = _f(32, "attention window W: a query sees W raw keys, itself included (S, F, B layers)")
    chunk: int | None = _f(None, "eidetic memory chunk C (<= window): memory is updated once per C tokens; None = window")
    memory_size: int = _f(32, "eidetic memory capacity M, entries per B layer")
    selector: str = _f("innovation", f"eidetic scorer, one of {SELECTORS}")
    memory_rule: str = _f("topk", f"memory update, one of {MEMORY_RULES}")
    fifo_per_chunk: int = _f(4, "with memory_rule=fifo: tokens kept from each chunk (M/k chunks are kept)")
    memory_decay: float = _f(1.0, "per-chunk decay of stored priorities, in (0, 1]; 1 = no ageing")
    score_layers: tuple[int, ...] | None = _f(None, "layer indices that run `selector`; other B layers use "
                                                  "recency; None = every B layer")
    selection_gate: bool = _f(False, "learn a per-token gate g = w.x through the task: g adds to the eidetic "
                                     "priority, and the task reaches it as `gate_read` says")
    gate_read: str = _f("value", f"how the selection gate reaches the task loss, one of {GATE_READS}: value = "
                                 "stored values are scaled by sigmoid(g); logit = log sigmoid(g) is added to the "
                                 "entry's attention logit (values unscaled)")
    gate_input: str = _f("x", f"what the selection gate reads, one of {GATE_INPUTS}: x = the layer's input token; "
                              "conv = the attention input (attn_conv's short causal conv of x: the token and the "
                              "attn_conv_size - 1 before it, so a token is judged in its local context)")
    train_memory_anneal: float = _f(0.0, "fraction of training over which the training pool shrinks linearly "
                                         "from train_memory_size to memory_size (0 = it stays at "
                                         "train_memory_size), so training ends on the memory it is evaluated with")
    gate_penalty: float = _f(0.0, "weight of a sparsity penalty mean(sigmoid(g)) on the selection gate, added to the "
                                  "auxiliary loss: every token's gate is pushed down, so only those the task pulls "
                                  "up stay above the cut")
    train_memory_size: int | None = _f(None, "eidetic capacity of a training forward from an empty state (None = "
                                             "memory_size): a larger pool gives the candidates below the cut a "
                                             "gradient through the gate; evaluation and decoding keep memory_size")
    train_store_topk: int = _f(0, "> 0: a training forward from the start of a sequence also reads a long-term "
                                  "store (bmojo.memory) built from the sequence's own evicted entries, retrieving "
                                  "this many per query and head (exact search), so the model learns to use one")
    fading: bool = _f(True, "B layers attend to the fading (SSM) keys; off leaves window + memory")
    tie_fading: bool = _f(True, "fading keys/values use the raw tokens' k/v projections")
    memory_rope: str = _f("own", f"where the eidetic keys sit under RoPE, one of {MEMORY_ROPES}: own = at their "
                                 "own positions (a query sees each entry's true distance); edge = at the window's "
                                 "edge before the reading block (every entry W..W+C-1 away: matched by content, at "
                                 "any length); with edge the long-term store keeps keys unrotated and is searched "
                                 "and read at the same edge")
    fading_gate: float | None = _f(None, "a learned logit offset on every fading key, starting at this value (e.g. "
                                         "-4: the fading segment starts nearly switched off and the task opens it); "
                                         "None = no offset")
    null_key: bool = _f(False, "B layers with memory: one learned key and value per query head (no RoPE, zero at "
                               "init) that every query sees beside the memory, so a query that needs nothing "
                               "stored can put its weight there")
    attn_conv: bool = _f(True, "short causal depthwise conv on the attention input (A, S, F, B layers)")
    attn_conv_size: int = _f(4, "kernel size of attn_conv")
    ssm_residual: bool = _f(False, "add the SSM output f to the F/B mixer output (y = Wo o + f)")
    ssm_kind: str = _f("mamba2", f"selective SSM kind, one of {SSM_KINDS}")
    d_state: int = _f(16, "SSM state size N")
    d_conv: int = _f(4, "SSM conv width K")
    expand: int = _f(2, "SSM inner width E = expand * d_model")
    ssm_head_dim: int = _f(32, "mamba2 head width P (divides E)")
    n_groups: int = _f(1, "mamba2 B/C groups (divides E / ssm_head_dim)")
    dt_rank: int | None = _f(None, "mamba1 dt rank; None = ceil(d_model / 16)")
    ssm_chunk: int = _f(32, "chunk length of the mamba2 (SSD) fast path")
    mlp: bool = _f(True, "SwiGLU MLP after each mixer")
    d_ff: int | None = _f(None, "MLP hidden width; None = 8/3 d_model rounded up to a multiple of 8")
    rope_theta: float = _f(10000.0, "RoPE base")
    rope_fraction: float = _f(1.0, "fraction of each head's frequency pairs that rotate (the highest frequencies); "
                                   "the rest carry no position, so content matching extrapolates to any distance")
    max_seq_len: int = _f(4096, "capacity of a full-attention (A) decode cache")
    norm_eps: float = _f(1e-5, "RMSNorm epsilon")
    tie_embeddings: bool = _f(True, "LM head shares the embedding matrix")
    init_std: float = _f(0.02, "std of the normal init of linear and embedding weights")
    impl: str = _f("auto", f"op backend, one of {IMPLS}: ref = sequential references, fast = chunked PyTorch "
                           "paths, fused = fast plus compiled kernels (the C++ CPU mamba1 scan, built on first use; "
                           "PyTorch where one cannot be built), auto = fused")

    # ---- derived -------------------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def chunk_size(self) -> int:
        return self.chunk or self.window

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def mamba2_heads(self) -> bool:
        """The model has mamba2 SSMs (M, F or B layers with ssm_kind mamba2), so ssm_head_dim and n_groups count."""
        return self.ssm_kind == "mamba2" and bool(set(self.pattern) & {"M", "F", "B"})

    @property
    def mamba1_dt_rank(self) -> int:
        return self.dt_rank or math.ceil(self.d_model / 16)

    @property
    def d_hidden(self) -> int:
        return self.d_ff or 8 * math.ceil(8 * self.d_model / 3 / 8)

    def layer_kind(self, i: int) -> str:
        return self.pattern[i % len(self.pattern)]

    def selector_for(self, i: int) -> str:
        if self.score_layers is None or i in self.score_layers:
            return self.selector
        return "recency"

    # ---- validation ----------------------------------------------------------------------------------
    def __post_init__(self):
        if isinstance(self.score_layers, list):
            self.score_layers = tuple(self.score_layers)
        self.validate()

    def validate(self) -> None:
        """Every field checked; the first bad one raises a ConfigError that names it, its value and what is allowed."""
        self._validate_shape()
        self._validate_memory()
        self._validate_ssm()

    def _need(self, ok: bool, name: str, msg: str):
        if not ok:
            raise ConfigError(f"ModelConfig.{name}={getattr(self, name)!r}: {msg}")

    def _validate_shape(self) -> None:
        need = self._need
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_state", "d_conv", "expand",
                     "ssm_head_dim", "n_groups", "ssm_chunk", "max_seq_len", "attn_conv_size", "fifo_per_chunk"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name, "must be a positive integer")
        need(isinstance(self.window, int) and self.window > 0, "window", "must be a positive integer (>= 1)")
        need(isinstance(self.memory_size, int) and self.memory_size >= 0, "memory_size", "must be an integer >= 0")
        need(isinstance(self.pattern, str) and len(self.pattern) > 0, "pattern", "must be a non-empty string")
        bad = sorted(set(self.pattern) - set(LAYER_KINDS))
        need(not bad, "pattern", f"unknown layer letter(s) {bad}; allowed: {sorted(LAYER_KINDS)}")
        need(self.d_model % self.n_heads == 0, "n_heads", f"must divide d_model={self.d_model}")
        need(self.head_dim % 2 == 0, "n_heads", f"head width d_model/n_heads={self.head_dim} must be even (RoPE)")
        need(self.n_kv_heads is None or (self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0),
             "n_kv_heads", f"must be a positive divisor of n_heads={self.n_heads}")
        need(self.chunk is None or (isinstance(self.chunk, int) and 0 < self.chunk <= self.window), "chunk",
             f"must be in 1 .. window={self.window} (a chunk longer than the window would break causality)")

    def _validate_memory(self) -> None:
        need = self._need
        need(self.selector in SELECTORS, "selector", f"allowed: {SELECTORS}")
        need(self.memory_rule in MEMORY_RULES, "memory_rule", f"allowed: {MEMORY_RULES}")
        need(self.memory_rule != "fifo" or (self.fifo_per_chunk <= self.chunk_size
                                             and self.memory_size % self.fifo_per_chunk == 0),
             "fifo_per_chunk", f"with fifo it must be <= chunk and divide memory_size={self.memory_size}")
        need(0.0 < self.memory_decay <= 1.0, "memory_decay", "must be in (0, 1]")
        need(isinstance(self.train_store_topk, int) and self.train_store_topk >= 0, "train_store_topk",
             "must be an integer >= 0")
        need(self.fading_gate is None or math.isfinite(self.fading_gate), "fading_gate", "must be None or finite")
        need(isinstance(self.gate_penalty, (int, float)) and self.gate_penalty >= 0, "gate_penalty", "must be >= 0")
        need(self.memory_rope in MEMORY_ROPES, "memory_rope", f"allowed: {MEMORY_ROPES}")
        need(self.gate_read in GATE_READS, "gate_read", f"allowed: {GATE_READS}")
        need(self.gate_input in GATE_INPUTS, "gate_input", f"allowed: {GATE_INPUTS}")
        need(self.gate_input == "x" or self.attn_conv, "gate_input", "conv needs attn_conv=True")
        need(self.train_memory_size is None or (isinstance(self.train_memory_size, int)
                                                and self.train_memory_size >= self.memory_size),
             "train_memory_size", f"must be None or an integer >= memory_size={self.memory_size}")
        need(isinstance(self.train_memory_anneal, (int, float)) and 0 <= self.train_memory_anneal <= 1,
             "train_memory_anneal", "must be in [0, 1]")
        need(self.train_memory_anneal == 0 or self.train_memory_size is not None, "train_memory_anneal",
             "needs train_memory_size (the pool it shrinks from)")
        need(self.train_memory_size is None or self.train_store_topk == 0, "train_memory_size",
             "cannot be combined with train_store_topk (the store is built from memory_size's evictions)")
        need(self.train_memory_size is None or self.memory_rule == "topk", "train_memory_size",
             "needs memory_rule='topk'")
        need(self.score_layers is None or all(isinstance(i, int) and 0 <= i < self.n_layers
                                              for i in self.score_layers),
             "score_layers", f"must be None or layer indices in 0 .. {self.n_layers - 1}")

    def _validate_ssm(self) -> None:
        need = self._need
        need(self.ssm_kind in SSM_KINDS, "ssm_kind", f"allowed: {SSM_KINDS}")
        if self.mamba2_heads:  # fields of the mamba2 layout only: a mamba1 model never reads them
            need(self.d_inner % self.ssm_head_dim == 0, "ssm_head_dim",
                 f"must divide E = expand*d_model = {self.d_inner} (mamba2 heads)")
            need((self.d_inner // self.ssm_head_dim) % self.n_groups == 0, "n_groups",
                 f"must divide the number of mamba2 heads {self.d_inner // self.ssm_head_dim}")
        need(self.dt_rank is None or self.dt_rank > 0, "dt_rank", "must be None or a positive integer")
        need(self.d_ff is None or self.d_ff > 0, "d_ff", "must be None or a positive integer")
        need(self.impl in IMPLS, "impl", f"allowed: {IMPLS}")
        need(isinstance(self.rope_fraction, (int, float)) and 0 <= self.rope_fraction <= 1, "rope_fraction",
             "must be in [0, 1]")

    # ---- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        if d["score_layers"] is not None:
            d["score_layers"] = list(d["score_layers"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """A config from its dict; a field that bmojo no longer has loads only at the one value it behaved as."""
        d = dict(d) if isinstance(d, dict) else d
        for name, value in RETIRED_FIELDS.items():
            if isinstance(d, dict) and name in d:
                if d[name] != value:
                    raise ConfigError(f"ModelConfig.{name}={d[name]!r}: this field was removed; a config that sets it "
                                      f"loads only with its old default {value!r}")
                del d[name]
        return cls(**checked_kwargs(cls, d))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))

    def fingerprint(self) -> str:
        """Identifies the architecture (everything but the op backend), e.g. to match decode states."""
        d = {**self.to_dict(), **RETIRED_FIELDS}  # (a retired field at its old value: fingerprints stay as they were)
        d.pop("impl")
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

