"""Tokenizers: byte-level (vocab 256, the default) and a byte-level BPE trained locally with HF `tokenizers`.

Both map text to ids and back exactly (`decode(encode(s)) == s` for every str), and both reserve id 0 as the
document separator written between documents in a token file: the NUL byte for the byte tokenizer (a file
holding a NUL byte is treated as binary and never tokenized) and `<|endoftext|>` for BPE.  A tokenizer is
saved as JSON only: `{"kind": "byte"}`, or `{"kind": "bpe", ...}` plus HF's `tokenizer.json`.
"""
from __future__ import annotations

import json
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
    def train(cls, texts: Iterable[str], vocab_size: int, progress: bool = False) -> "BPETokenizer":
        if not 257 <= vocab_size <= 65535:
            raise ConfigError(f"--vocab-size={vocab_size}: a byte-level BPE needs 257 <= vocab_size <= 65535")
        tk = _tokenizers()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[cls.SEP], show_progress=progress,
                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer, length=len(texts) if hasattr(texts, "__len__") else None)
        return cls(tok)

    @classmethod
    def load(cls, folder: str | Path) -> "BPETokenizer":
        return cls(_read_file(Path(folder) / BPE_FILE))

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


class FileTokenizer(BPETokenizer):
    """A user's tokenizer: a `tokenizer.json` (HF `tokenizers`), or an HF tokenizer folder holding one (its
    `tokenizer_config.json`, when present, names the BOS and EOS tokens).  Documents are separated by its BOS
    token when it has one (Llama, Mistral) and by its EOS token otherwise (GPT-NeoX, GPT-2's <|endoftext|>); that id
    is `sep_id`, written before every document."""

    kind = "file"
    BOS = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
    EOS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eos|>")

    def __init__(self, tok, sep_token: str):
        self.tok, self.sep_token = tok, sep_token
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.sep_id = tok.token_to_id(sep_token)
        if self.sep_id is None:
            raise ConfigError(f"tokenizer: separator {sep_token!r} is not in its vocabulary")

    @classmethod
    def from_path(cls, path: str | Path) -> "FileTokenizer":
        path = Path(path)
        file = path / BPE_FILE if path.is_dir() else path
        if not file.is_file():
            raise ConfigError(f"--tokenizer {path}: expected 'byte', 'bpe', a tokenizer.json or a folder holding one")
        tok = _read_file(file)
        config = file.with_name(file.name.replace("tokenizer.json", "tokenizer_config.json"))  # hf_ copies too
        return cls(tok, cls._separator(tok, config, file))

    @classmethod
    def _separator(cls, tok, config: Path, file: Path) -> str:
        named = {}
        if config.is_file():
            try:
                c = json.loads(config.read_text())
            except ValueError as e:
                raise ConfigError(f"{config}: not JSON ({e})") from None
            for k in ("bos_token", "eos_token"):
                v = c.get(k)
                v = v.get("content") if isinstance(v, dict) else v
                if isinstance(v, str) and tok.token_to_id(v) is not None:
                    named[k] = v
            if "bos_token" in named and c.get("add_bos_token", True):
                return named["bos_token"]
            if "eos_token" in named:
                return named["eos_token"]
        for t in cls.BOS + cls.EOS:
            if tok.token_to_id(t) is not None:
                return t
        raise ConfigError(f"{file}: no BOS or EOS token found (looked for {cls.BOS + cls.EOS}) to separate "
                          "documents; add one to its tokenizer_config.json")

    @classmethod
    def load(cls, folder: str | Path, sep_token: str | None = None) -> "FileTokenizer":
        return cls(_read_file(Path(folder) / BPE_FILE), sep_token)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of each token decoded alone (a SentencePiece word-start marker counts as its space); special
        tokens stand for no text."""
        special = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            piece = self.tok.id_to_token(i)
            if piece is not None and piece not in special:
                out[i] = len(self.tok.decode([i], skip_special_tokens=False).encode("utf-8"))
        return out

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "sep_id": self.sep_id, "sep_token": self.sep_token,
                "file": BPE_FILE}


Tokenizer = ByteTokenizer | BPETokenizer | FileTokenizer


def load_tokenizer(info: dict, folder: str | Path) -> Tokenizer:
    """The tokenizer described by `info` (a to_dict()), with its files in `folder`."""
    kind = info.get("kind") if isinstance(info, dict) else None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.load(folder)
    if kind == "file":
        return FileTokenizer.load(folder, info.get("sep_token"))
    raise ConfigError(f"tokenizer kind {kind!r} in {folder}: expected 'byte', 'bpe' or 'file'")


def same_tokens(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether two tokenizers give every text the same ids and separate documents by the same id: the byte
    tokenizer matches only itself; BPE and file tokenizers match when their HF tokenizers serialize the same (a
    `bmojo train` BPE read back as `--tokenizer its/tokenizer.json` matches the BPE it was)."""
    if a.vocab_size != b.vocab_size or a.sep_id != b.sep_id:
        return False
    if isinstance(a, ByteTokenizer) or isinstance(b, ByteTokenizer):
        return isinstance(a, ByteTokenizer) and isinstance(b, ByteTokenizer)
    return a.tok.to_str() == b.tok.to_str()


def describe_tokenizer(tok: Tokenizer) -> str:
    return f"{tok.kind} (vocabulary {tok.vocab_size:,}, separator id {tok.sep_id})"


def tokenizer_files(tok: Tokenizer) -> dict[str, str]:
    """File name -> text, the files a tokenizer needs beside its to_dict() (for checkpoints)."""
    if isinstance(tok, BPETokenizer):  # FileTokenizer too
        return {BPE_FILE: tok.tok.to_str()}
    return {}


def _read_file(file: Path):
    """An HF `tokenizers.Tokenizer` from its JSON file; a missing or unreadable file is a ConfigError naming it."""
    if not file.is_file():
        raise ConfigError(f"{file}: tokenizer file is missing")
    try:
        return _tokenizers().Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises its own Exception type for bad JSON
        raise ConfigError(f"{file}: not a readable tokenizers file ({e})") from None


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ConfigError("the BPE tokenizer needs HF tokenizers: pip install 'bmojo[text]' (or tokenizers)") from None
    return tokenizers
