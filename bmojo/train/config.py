"""Training config: one typed dataclass; each field's help is its CLI help."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from bmojo.config import ConfigError, _f, checked_kwargs

PRECISIONS = ("fp32", "bf16-mixed")


@dataclass
class TrainConfig:
    steps: int = _f(1000, "optimizer steps")
    batch_size: int = _f(32, "sequences per step")
    lr: float = _f(3e-3, "peak learning rate (AdamW)")
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of lr (cosine decay)")
    warmup: int = _f(50, "linear warmup steps")
    weight_decay: float = _f(0.1, "AdamW weight decay (never on norms, biases, embeddings-free 1-D or tagged params)")
    betas: tuple[float, float] = _f((0.9, 0.95), "AdamW betas")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0 = off)")
    seed: int = _f(0, "seed of the model init and the data stream")
    eval_every: int = _f(100, "evaluate every this many steps (0 = only at the end)")
    eval_batches: int = _f(4, "batches per evaluation")
    target_acc: float | None = _f(None, "stop early once eval accuracy reaches this")
    plateau: float | None = _f(None, "stop early at a plateau: once plateau_min_steps are done, when the best eval "
                                     "accuracy of the last quarter of the steps is at most this much above the best "
                                     "before it (e.g. 0.01); None = never")
    plateau_min_steps: int = _f(0, "the plateau rule is first checked after this many steps (a model still at "
                                   "chance has not plateaued, it has not started)")
    log_every: int = _f(10, "write a metrics line every this many steps")
    save_every: int = _f(0, "checkpoint every this many steps (0 = only the final one)")
    progress: bool = _f(True, "show a progress line on stderr")
    parallel: str = _f("ddp", "with several processes (torchrun): ddp (replicated model) or fsdp (FSDP2, sharded)")
    skip_nonfinite: bool = _f(False, "skip (and count) a batch whose loss or gradients are NaN/Inf instead of "
                                     "stopping with an error")
    precision: str = _f("fp32", "fp32, or bf16-mixed: the forward and backward under bf16 autocast, the weights, "
                                "gradients and optimizer state kept in fp32")
    grad_accum: int = _f(1, "split each batch into this many micro-batches, one forward and backward each, then one "
                            "update: the same step as the whole batch at 1/N of its activation memory")
    compile: bool = _f(False, "run the training forward under torch.compile (the first steps pay the compile)")
    checkpoint_activations: bool = _f(False, "recompute each block's activations in the backward pass instead of "
                                             "keeping them: less memory for about one more forward per step")
    tensorboard: str | None = _f(None, "also write loss, perplexity, learning rate, tokens/s and gradient norm as "
                                       "TensorBoard event files in this folder (pip install tensorboard); "
                                       "metrics.jsonl stays the record")

    def __post_init__(self):
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        for name in ("steps", "batch_size", "eval_batches", "log_every", "grad_accum"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"TrainConfig.{name}={getattr(self, name)!r}: must be a positive integer")
        for name in ("warmup", "eval_every", "save_every", "plateau_min_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name}={getattr(self, name)!r}: must be an integer >= 0")
        if not self.lr > 0:
            raise ConfigError(f"TrainConfig.lr={self.lr!r}: must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"TrainConfig.min_lr_ratio={self.min_lr_ratio!r}: must be in [0, 1]")
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"TrainConfig.parallel={self.parallel!r}: allowed: ddp, fsdp")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"TrainConfig.precision={self.precision!r}: allowed: {', '.join(PRECISIONS)}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"TrainConfig.grad_accum={self.grad_accum}: must divide batch_size={self.batch_size} "
                              "(equal micro-batches)")
        if self.target_acc is not None and not 0 < self.target_acc <= 1:
            raise ConfigError(f"TrainConfig.target_acc={self.target_acc!r}: must be in (0, 1] or None")
        b = self.betas
        if not (isinstance(b, tuple) and len(b) == 2 and all(isinstance(x, (int, float)) and 0 <= x < 1 for x in b)):
            raise ConfigError(f"TrainConfig.betas={b!r}: must be two numbers in [0, 1), e.g. 0.9,0.95")
        if self.plateau is not None and not 0 <= self.plateau < 1:
            raise ConfigError(f"TrainConfig.plateau={self.plateau!r}: must be in [0, 1) or None")

    # the fields a resumed run may change: they do not change what is trained
    MAY_CHANGE_ON_RESUME = ("steps", "progress", "skip_nonfinite", "parallel", "grad_accum", "compile",
                            "checkpoint_activations", "tensorboard")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(d["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**checked_kwargs(cls, d))
