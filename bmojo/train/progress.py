"""A dependency-free progress line on stderr, and JSONL metrics."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


class Progress:
    def __init__(self, total: int, desc: str = "", enabled: bool = True, every_s: float = 0.5):
        self.total, self.desc, self.enabled, self.every_s = total, desc, enabled, every_s
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last = 0.0

    def update(self, n: int, **fields) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        final = n >= self.total
        if not final and now - self.last < (self.every_s if self.tty else 10.0):
            return
        self.last = now
        el = now - self.t0
        eta = el / max(n, 1) * (self.total - n)
        body = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        line = f"{self.desc} {n}/{self.total} [{el:.0f}s<{eta:.0f}s] {body}"
        if self.tty:
            sys.stderr.write("\r" + line[:200].ljust(120) + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


class MetricsLog:
    """Appends one JSON object per line."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def keep_until(self, step: int) -> None:
        """Drop the rows of steps after `step` (a resumed run redoes them), atomically."""
        if self.path is None or not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(kept))
            tmp.replace(self.path)

    def write(self, **row) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


class TensorBoardLog:
    """The metrics rows again as TensorBoard scalars (train/loss, train/ppl, train/lr, train/tokens_per_s,
    train/grad_norm, eval/loss, eval/ppl, eval/acc, ...), one event file per run segment in `folder`.
    metrics.jsonl stays the record; this is for watching a run."""

    NAMES = {"loss": "train/loss", "acc": "train/acc", "lr": "train/lr", "tokens_per_s": "train/tokens_per_s",
             "grad_norm": "train/grad_norm", "aux_loss": "train/aux_loss"}

    def __init__(self, folder: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from bmojo.config import ConfigError
            raise ConfigError("--tensorboard needs the tensorboard package: pip install 'bmojo[track]' "
                              "(or tensorboard)") from None
        self.writer = SummaryWriter(str(folder), flush_secs=10)

    def write(self, row: dict) -> None:
        step = row["step"]
        if "loss" in row:
            self.writer.add_scalar("train/ppl", math.exp(min(row["loss"], 700.0)), step)
        for k, v in row.items():
            name = self.NAMES.get(k) or (f"eval/{k[5:]}" if k.startswith("eval_") and k != "eval_n" else None)
            if name is not None and isinstance(v, (int, float)):
                self.writer.add_scalar(name, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
