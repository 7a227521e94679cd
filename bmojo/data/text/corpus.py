"""Prepared corpora: documents split by name into train/val/test, tokenized into memory-mapped token files.

A prepared corpus is a folder `ROOT/CORPUS/TOKENIZER-ID/` (e.g. `data/stdlib/byte-3f9c0a1b2d4e`), where ID hashes
everything that decides its tokens: the documents' names and text, the tokenizer and the split settings.  Another
seed, fraction, tokenizer or content gives another folder, so a prepared corpus never changes under a run:
    manifest.json     source, licence, tokenizer, split sizes and SHA-256s, every document's split and offset
    {train,val,test}.bin  the split's documents as token ids, each preceded by the separator id 0
    tokenizer.json    (BPE only) the tokenizer, trained on the training split alone
Splits are decided per document from a hash of its name (and the seed), so they are disjoint and the same on
every machine; the folder is written to a temporary name and renamed, so a crash leaves no half corpus.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bmojo.config import ConfigError
from bmojo.data.text.sources import BUILTIN, Source, path_source, read_documents
from bmojo.data.text.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer
from bmojo.utils.jsonfile import read_json
from bmojo.utils.paths import inside

FORMAT, VERSION = "bmojo-corpus", 1
SPLITS = ("train", "val", "test")
DEFAULT_ROOT = "data"


def assign_splits(names: list[str], val_frac: float = 0.05, test_frac: float = 0.05, seed: int = 0) -> dict:
    """name -> split.  Documents are ranked by SHA-256 of (seed, name); the first test_frac go to test, the next
    val_frac to val (at least one each), the rest to train."""
    if len(set(names)) != len(names):
        raise ConfigError("document names must be unique")
    if len(names) < 3:
        raise ConfigError(f"need at least 3 documents to split into train/val/test, got {len(names)}")
    for field, v in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0 < v < 0.5:
            raise ConfigError(f"{field}={v}: must be in (0, 0.5)")
    order = sorted(names, key=lambda n: hashlib.sha256(f"{seed}\0{n}".encode()).hexdigest())
    n_test = max(1, round(len(names) * test_frac))
    n_val = max(1, round(len(names) * val_frac))
    return {n: ("test" if i < n_test else "val" if i < n_test + n_val else "train") for i, n in enumerate(order)}


def split_pieces(name: str, text: str, pieces: int) -> list[tuple[str, str]]:
    """One long text -> `pieces` documents cut at line ends (for a corpus of one or two files)."""
    lines = text.splitlines(keepends=True)
    per = max(1, -(-len(lines) // pieces))
    return [(f"{name}#{i // per}", "".join(lines[i:i + per])) for i in range(0, len(lines), per)]


def corpus_tag(corpus: str) -> str:
    if corpus in BUILTIN:
        return corpus
    path = Path(corpus).resolve()
    return f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def tokenizer_tag(tokenizer: str, vocab_size: int) -> str:
    if tokenizer == "byte":
        return "byte"
    if tokenizer == "bpe":
        return f"bpe{vocab_size}"
    raise ConfigError(f"--tokenizer {tokenizer!r}: expected 'byte' or 'bpe'")


def prepare(corpus: str, *, tokenizer: str = "byte", vocab_size: int = 4096, root: str | Path = DEFAULT_ROOT,
            val_frac: float = 0.05, test_frac: float = 0.05, seed: int = 0, min_bytes: int = 16,
            strict: bool = False, source: str | None = None, force: bool = False, log=print) -> Path:
    """Prepare `corpus` (a built-in name or a path) and return its folder; an identical prepared corpus is reused."""
    settings = {"val_frac": val_frac, "test_frac": test_frac, "seed": seed, "min_bytes": min_bytes}
    tok_tag = tokenizer_tag(tokenizer, vocab_size)
    src = _source(corpus, source, Path(root))
    t0 = time.perf_counter()
    log(f"reading {src.description}")
    docs, skipped = read_documents(src, min_bytes=min_bytes, strict=strict)
    if not docs:
        raise ConfigError(f"--corpus {corpus}: no usable documents (skipped {skipped.summary()})")
    if len(docs) < 3:
        docs = [piece for name, text in docs for piece in split_pieces(name, text, 20)]
    corpus_id = content_id(docs, tok_tag, settings)
    out = Path(root) / corpus_tag(corpus) / f"{tok_tag}-{corpus_id}"
    if not force and (out / "manifest.json").is_file():
        try:
            old = TokenCorpus(out)
            log(f"{out}: already prepared ({old.summary()}); --force to redo")
            return out
        except ConfigError as e:  # damaged: the source is still there, so it is prepared again
            log(f"{out}: damaged ({e}); preparing it again")
    log(f"  {len(docs)} documents, {sum(len(t) for _, t in docs):,} characters; skipped {skipped.summary()}")
    splits = assign_splits([n for n, _ in docs], val_frac, test_frac, seed)
    if tokenizer == "byte":
        tok: Tokenizer = ByteTokenizer()
    else:
        log(f"  training a byte-level BPE tokenizer (vocab {vocab_size}) on the training split")
        tok = BPETokenizer.train([t for n, t in docs if splits[n] == "train"], vocab_size, progress=sys.stderr.isatty())
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok.save(tmp)
    manifest = {"format": FORMAT, "version": VERSION, "corpus": src.name, "source": src.info,
                "description": src.description, "licence": src.licence, "tokenizer": tok.to_dict(),
                "settings": settings, "id": corpus_id, "dtype": _dtype(tok.vocab_size), "skipped": skipped.to_dict(),
                "splits": {}, "documents": []}
    for split in SPLITS:
        names_texts = [(n, t) for n, t in docs if splits[n] == split]
        ids = tok.encode_batch([t for _, t in names_texts]) if isinstance(tok, BPETokenizer) else \
            [tok.encode(t) for _, t in names_texts]
        stream, offset = [], 0
        for (name, _), doc in zip(names_texts, ids):
            stream += [np.array([tok.sep_id]), doc]
            manifest["documents"].append({"name": name, "split": split, "offset": offset + 1, "tokens": len(doc)})
            offset += len(doc) + 1
        arr = np.concatenate(stream).astype(manifest["dtype"])
        arr.tofile(tmp / f"{split}.bin")
        manifest["splits"][split] = {"file": f"{split}.bin", "documents": len(names_texts), "tokens": int(arr.size),
                                     "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
        log(f"  {split}: {len(names_texts)} documents, {arr.size:,} tokens")
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return out


def content_id(docs: list[tuple[str, str]], tok_tag: str, settings: dict) -> str:
    """12 hex digits of SHA-256 over what decides a prepared corpus: the tokenizer, the settings, every document's
    name and text (in order)."""
    h = hashlib.sha256(json.dumps({"tokenizer": tok_tag, "settings": settings}, sort_keys=True).encode())
    for name, text in docs:
        h.update(f"\0{len(name)}:{name}\0{len(text)}:".encode())
        h.update(text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:12]


class TokenCorpus:
    """A prepared corpus: `tokens(split)` is a read-only memory map; `document(split, i)` one document's ids."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        file = self.folder / "manifest.json"
        m = read_json(file, ConfigError, "prepared corpus (run `bmojo data prepare`)")
        if m.get("format") != FORMAT or m.get("version") != VERSION:
            raise ConfigError(f"{file}: not a {FORMAT} v{VERSION} manifest")
        self.manifest = m
        self.dtype = self._check_dtype(file, m)
        for split, info in m["splits"].items():
            path = inside(self.folder, info.get("file") if isinstance(info, dict) else None,
                          f"{file}: splits.{split}.file")
            size = path.stat().st_size if path.is_file() else -1
            if size != info["tokens"] * self.dtype.itemsize:
                raise ConfigError(f"{path}: {size} bytes, the manifest says {info['tokens']} tokens of {self.dtype}; "
                                  "re-run `bmojo data prepare --force`")
        self._tok = None

    @staticmethod
    def _check_dtype(file: Path, m: dict) -> np.dtype:
        if m.get("dtype") not in ("uint8", "uint16", "uint32") or not isinstance(m.get("splits"), dict):
            raise ConfigError(f"{file}: dtype={m.get('dtype')!r} / splits: not a valid manifest; re-run "
                              "`bmojo data prepare --force`")
        return np.dtype(m["dtype"])

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tok is None:
            self._tok = load_tokenizer(self.manifest["tokenizer"], self.folder)
        return self._tok

    def tokens(self, split: str) -> np.ndarray:
        if split not in self.manifest["splits"]:
            raise ConfigError(f"split {split!r}: expected one of {list(self.manifest['splits'])}")
        return np.memmap(inside(self.folder, self.manifest["splits"][split]["file"], f"splits.{split}.file"),
                         dtype=self.dtype, mode="r")

    def documents(self, split: str) -> list[dict]:
        return [d for d in self.manifest["documents"] if d["split"] == split]

    def document(self, split: str, i: int) -> np.ndarray:
        d = self.documents(split)[i]
        return self.tokens(split)[d["offset"]:d["offset"] + d["tokens"]]

    def split_documents(self, split: str) -> list[np.ndarray]:
        """Every document of the split as token ids (views into the memory map)."""
        tokens = self.tokens(split)
        return [tokens[d["offset"]:d["offset"] + d["tokens"]] for d in self.documents(split)]

    def verify(self) -> None:
        """Check every split's SHA-256 against the manifest."""
        for split, info in self.manifest["splits"].items():
            digest = hashlib.sha256(np.asarray(self.tokens(split)).tobytes()).hexdigest()
            if digest != info["sha256"]:
                raise ConfigError(f"{self.folder / info['file']}: SHA-256 does not match the manifest (corrupt?)")

    @property
    def digest(self) -> str:
        """16 hex digits of SHA-256 over the tokenizer and every split's token SHA-256: a run records it, so that
        resuming or evaluating on a corpus whose tokens changed is refused (corpora of every version have it)."""
        m = self.manifest
        key = {"tokenizer": m.get("tokenizer"), "splits": {k: v.get("sha256") for k, v in sorted(m["splits"].items())}}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def check_digest(self, recorded: str | None, what: str) -> None:
        """Refuse a corpus whose tokens are not the ones `what` (a run) recorded; None (an older run) passes."""
        if recorded is not None and recorded != self.digest:
            raise ConfigError(f"{self.folder}: this corpus has digest {self.digest}, but {what} was trained on "
                              f"digest {recorded}: its tokens changed since (prepared again in place?); prepare the "
                              "original corpus again or train a new run")

    def summary(self) -> str:
        s = self.manifest["splits"]
        return ", ".join(f"{k} {v['documents']} docs / {v['tokens']:,} tokens" for k, v in s.items())


def open_corpus(corpus: str, *, tokenizer: str = "byte", vocab_size: int = 4096, root: str | Path = DEFAULT_ROOT,
                log=print, **prepare_kw) -> TokenCorpus:
    """A prepared corpus folder, or a built-in name / user path prepared on first use."""
    if (Path(corpus) / "manifest.json").is_file():
        return TokenCorpus(corpus)
    return TokenCorpus(prepare(corpus, tokenizer=tokenizer, vocab_size=vocab_size, root=root, log=log, **prepare_kw))


def _source(corpus: str, source: str | None, root: Path) -> Source:
    if corpus == "shakespeare":
        return BUILTIN[corpus](source, cache=root / "_sources")
    if source is not None:
        raise ConfigError(f"--source applies to --corpus shakespeare only, not {corpus!r}")
    return BUILTIN[corpus]() if corpus in BUILTIN else path_source(corpus)


def _dtype(vocab_size: int) -> str:
    return "uint8" if vocab_size <= 256 else "uint16" if vocab_size <= 65536 else "uint32"
