"""Built-in text that ships with every Python: the Zen of Python (the `this` module), byte-level."""
from __future__ import annotations

import codecs
import importlib.util
import re

import torch


def zen_of_python() -> str:
    """The Zen of Python, read from the `this` module's source without importing it (import prints it)."""
    spec = importlib.util.find_spec("this")
    src = open(spec.origin, encoding="utf-8").read()
    encoded = re.search(r's = """(.*?)"""', src, re.S).group(1)
    return codecs.decode(encoded, "rot13")


def encode_bytes(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def decode_bytes(ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def random_windows(tokens: torch.Tensor, batch: int, length: int, gen: torch.Generator):
    """Next-token batches: (inputs, labels) of shape (batch, length) from random offsets."""
    starts = torch.randint(0, len(tokens) - length - 1, (batch,), generator=gen)
    idx = starts[:, None] + torch.arange(length + 1)
    seq = tokens[idx]
    return seq[:, :-1], seq[:, 1:]
