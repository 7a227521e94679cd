"""Tokenizers: byte-level (vocab 256, the default) and a byte-level BPE trained locally with HF `tokenizers`.

Both map text to ids and back exactly (`decode(encode(s)) == s` for every str), and both reserve id 0 as the
document separator written between documents in a token file: the NUL byte for the byte tokenizer (a file
holding a NUL byte is treated as binary and never tokenized) and `<|endoftext|>` for BPE.  A tokenizer is
saved as JSON only: `{"kind": "byte"}`, or `{"kind": "bpe", ...}` plus HF's `tokenizer.json`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from bmojo.config import ConfigError

SEP_ID = 0
BPE_FILE = "tokenizer.json"


class ByteTokenizer:
    kind = "byte"
    vocab_size = 256
    sep_id = SEP_ID

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        """(vocab,) UTF-8 bytes each token stands for (for bits per byte)."""
        return np.ones(self.vocab_size, dtype=np.int64)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "sep_id": self.sep_id}

    def save(self, folder: str | Path) -> None:
        pass  # fully described by to_dict()

    def as_tokenizers(self):
        """The same tokenizer as an HF `tokenizers.Tokenizer` (id = byte value): a byte-level BPE with one token
        per byte and no merges.  Used to hand bmojo models to `transformers` with their tokenizer."""
        tk = _tokenizers()
        vocab = {ch: b for b, ch in enumerate(_byte_chars())}
        tok = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = tk.decoders.ByteLevel()
        return tok


def _byte_chars() -> list[str]:
    """The printable character byte-level (GPT-2 style) tokenizers use for each byte value 0..255: printable
    Latin-1 bytes stand for themselves, the others for code points 256, 257, ... in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


class BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenization, no normalizer, so it round-trips every string)."""

    kind = "bpe"
    sep_id = SEP_ID
    SEP = "<|endoftext|>"

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        if tok.token_to_id(self.SEP) != SEP_ID:
            raise ConfigError(f"BPE tokenizer: {self.SEP!r} must have id {SEP_ID}, has {tok.token_to_id(self.SEP)}")

    @classmethod
    def train(cls, texts: list[str], vocab_size: int, progress: bool = False) -> "BPETokenizer":
        if not 257 <= vocab_size <= 65535:
            raise ConfigError(f"--vocab-size={vocab_size}: a byte-level BPE needs 257 <= vocab_size <= 65535")
        tk = _tokenizers()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[cls.SEP], show_progress=progress,
                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer, length=len(texts))
        return cls(tok)

    @classmethod
    def load(cls, folder: str | Path) -> "BPETokenizer":
        file = Path(folder) / BPE_FILE
        if not file.is_file():
            raise ConfigError(f"{file}: BPE tokenizer file is missing")
        try:
            tok = _tokenizers().Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises its own Exception type for bad JSON
            raise ConfigError(f"{file}: not a readable tokenizers file ({e})") from None
        return cls(tok)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        # Byte-level BPE spells each byte as one character, so a token's length in characters is its length in
        # bytes; the separator stands for no text.
        out = np.array([len(self.tok.id_to_token(i)) for i in range(self.vocab_size)], dtype=np.int64)
        out[SEP_ID] = 0
        return out

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "sep_id": self.sep_id, "file": BPE_FILE}

    def save(self, folder: str | Path) -> None:
        self.tok.save(str(Path(folder) / BPE_FILE))


Tokenizer = ByteTokenizer | BPETokenizer


def load_tokenizer(info: dict, folder: str | Path) -> Tokenizer:
    """The tokenizer described by `info` (a to_dict()), with its files in `folder`."""
    kind = info.get("kind") if isinstance(info, dict) else None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.load(folder)
    raise ConfigError(f"tokenizer kind {kind!r} in {folder}: expected 'byte' or 'bpe'")


def tokenizer_files(tok: Tokenizer) -> dict[str, str]:
    """File name -> text, the files a tokenizer needs beside its to_dict() (for checkpoints)."""
    if isinstance(tok, BPETokenizer):
        return {BPE_FILE: tok.tok.to_str()}
    return {}


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ConfigError("the BPE tokenizer needs HF tokenizers: pip install 'bmojo[text]' (or tokenizers)") from None
    return tokenizers
