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
from bmojo.data.text.sources import BUILTIN, Skipped, Source, iter_documents, path_source
from bmojo.data.text.tokenizer import BPETokenizer, ByteTokenizer, FileTokenizer, Tokenizer, load_tokenizer, \
    tokenizer_files
from bmojo.utils.jsonfile import read_json
from bmojo.utils.paths import inside

FORMAT, VERSION = "bmojo-corpus", 2
READABLE = (1, 2)  # version 1: one token file per split and every document in the manifest
SHARD_TOKENS = 1 << 28  # tokens per shard file (512 MiB of uint16)
BPE_SAMPLE_BYTES = 256 << 20  # text a BPE is trained on, from the start of the training split
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


def tokenizer_tag(tokenizer: str, vocab_size: int) -> tuple[str, FileTokenizer | None]:
    """(the folder-name tag of a tokenizer, the user's tokenizer when `tokenizer` is a path).  A user's tokenizer
    is tagged by the SHA-256 of its JSON and separator, so another tokenizer gives another corpus folder."""
    if tokenizer == "byte":
        return "byte", None
    if tokenizer == "bpe":
        return f"bpe{vocab_size}", None
    tok = FileTokenizer.from_path(tokenizer)
    key = json.dumps([tok.tok.to_str(), tok.sep_token])
    return f"tok{hashlib.sha256(key.encode()).hexdigest()[:8]}", tok


def prepare(corpus: str, *, tokenizer: str = "byte", vocab_size: int = 4096, root: str | Path = DEFAULT_ROOT,
            val_frac: float = 0.05, test_frac: float = 0.05, seed: int = 0, min_bytes: int = 16,
            strict: bool = False, source: str | None = None, force: bool = False, text_field: str = "text",
            workers: int | None = None, shard_tokens: int = SHARD_TOKENS, bpe_sample_bytes: int = BPE_SAMPLE_BYTES,
            log=print) -> Path:
    """Prepare `corpus` (a built-in name or a path) and return its folder; an identical prepared corpus is reused.

    It streams: a first pass over the documents hashes them and decides their splits (only names are kept), a
    second tokenizes them in `workers` processes and appends each split's ids to shard files of at most
    `shard_tokens` tokens, so memory follows the largest document, not the corpus.  A BPE is trained on the first
    `bpe_sample_bytes` of the training split.  Everything is written under a temporary name and renamed at the
    end: an interrupted prepare leaves no corpus that looks complete, and the next one starts clean."""
    settings = {"val_frac": val_frac, "test_frac": test_frac, "seed": seed, "min_bytes": min_bytes,
                "format": VERSION, "bpe_sample_bytes": bpe_sample_bytes if tokenizer == "bpe" else None}
    tok_tag, user_tok = tokenizer_tag(tokenizer, vocab_size)
    src = _source(corpus, source, Path(root), text_field)
    t0 = time.perf_counter()
    log(f"reading {src.description}")
    names, skipped, corpus_hash, n_bytes, pieces = _scan(corpus, src, tok_tag, settings, min_bytes, strict)
    corpus_id = corpus_hash[:12]
    out = Path(root) / corpus_tag(corpus) / f"{tok_tag}-{corpus_id}"
    if not force and (out / "manifest.json").is_file():
        try:
            old = TokenCorpus(out)
            log(f"{out}: already prepared ({old.summary()}); --force to redo")
            return out
        except ConfigError as e:  # damaged: the source is still there, so it is prepared again
            log(f"{out}: damaged ({e}); preparing it again")
    log(f"  {len(names)} documents, {n_bytes:,} bytes; skipped {skipped.summary()}")
    splits = assign_splits(names, val_frac, test_frac, seed)
    docs = lambda: _documents(src, min_bytes, strict, pieces)
    tok = _tokenizer_for(tokenizer, user_tok, docs, splits, vocab_size, bpe_sample_bytes, log)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok.save(tmp)
    dtype = _dtype(tok.vocab_size)
    writers = _write_splits(tmp, tok, dtype, docs(), splits, workers, shard_tokens, _Meter(n_bytes, log))
    manifest = {"format": FORMAT, "version": VERSION, "corpus": src.name, "source": src.info,
                "description": src.description, "licence": src.licence, "tokenizer": tok.to_dict(),
                "settings": settings, "id": corpus_id, "dtype": dtype, "skipped": skipped.to_dict(),
                "documents_file": "documents.jsonl", "splits": {}}
    for split, w in writers.items():
        manifest["splits"][split] = w.close()
        log(f"  {split}: {w.documents} documents, {w.tokens:,} tokens in {len(w.shards)} shard(s)")
    _publish(tmp, out, manifest)
    log(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return out


def _publish(tmp: Path, out: Path, manifest: dict) -> None:
    """The manifest written last, then the finished corpus renamed into place (replacing an older one)."""
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def _tokenizer_for(tokenizer: str, user_tok, docs, splits: dict, vocab_size: int, bpe_sample_bytes: int,
                   log) -> Tokenizer:
    """The byte tokenizer, a BPE trained on the first `bpe_sample_bytes` of the training split, or the user's."""
    if tokenizer == "byte":
        return ByteTokenizer()
    if tokenizer == "bpe":
        log(f"  training a byte-level BPE tokenizer (vocab {vocab_size}) on up to {bpe_sample_bytes / 1e6:,.0f} MB "
            "of the training split")
        return BPETokenizer.train(_sample((t for n, t in docs() if splits[n] == "train"), bpe_sample_bytes),
                                  vocab_size, progress=sys.stderr.isatty())
    return user_tok


def _write_splits(tmp: Path, tok: Tokenizer, dtype: str, docs, splits: dict, workers, shard_tokens: int,
                  meter: "_Meter") -> dict:
    """The second pass: tokenize `docs` and append each to its split's shards under `tmp`, with one line per
    document in documents.jsonl -> {split: its writer}."""
    writers = {split: _SplitWriter(tmp, split, dtype, shard_tokens) for split in SPLITS}
    with open(tmp / "documents.jsonl", "w") as names_file:
        for name, ids, size in _tokenize(tok, docs, workers):
            split = splits[name]
            offset = writers[split].add(tok.sep_id, ids)
            names_file.write(json.dumps({"name": name, "split": split, "offset": offset, "tokens": len(ids)}) + "\n")
            meter.update(size)
    meter.done()
    return writers


def _scan(corpus: str, src: Source, tok_tag: str, settings: dict, min_bytes: int, strict: bool):
    """The first pass -> (names, skipped, SHA-256 hex of everything that decides the tokens, bytes, pieces): a
    corpus of fewer than 3 documents is cut into pieces (`pieces` = 20), to have three splits."""
    skipped = Skipped()
    h = hashlib.sha256(json.dumps({"tokenizer": tok_tag, "settings": settings}, sort_keys=True).encode())
    names, n_bytes = [], 0
    for name, text in iter_documents(src, skipped, min_bytes=min_bytes, strict=strict):
        names.append(name)
        n_bytes += _hash_document(h, name, text)
    if not names:
        raise ConfigError(f"--corpus {corpus}: no usable documents (skipped {skipped.summary()})")
    if len(names) >= 3:
        return names, skipped, h.hexdigest(), n_bytes, 0
    h = hashlib.sha256(json.dumps({"tokenizer": tok_tag, "settings": settings}, sort_keys=True).encode())
    names = []
    for name, text in _documents(src, min_bytes, False, 20):
        names.append(name)
        _hash_document(h, name, text)
    return names, skipped, h.hexdigest(), n_bytes, 20


def _hash_document(h, name: str, text: str) -> int:
    data = text.encode("utf-8", "surrogatepass")
    h.update(f"\0{len(name)}:{name}\0{len(text)}:".encode())
    h.update(data)
    return len(data)


def _documents(src: Source, min_bytes: int, strict: bool, pieces: int):
    """The usable documents again (the second pass), each cut into `pieces` when asked."""
    for name, text in iter_documents(src, Skipped(), min_bytes=min_bytes, strict=strict):
        yield from split_pieces(name, text, pieces) if pieces else [(name, text)]


def _sample(texts, limit: int):
    """The texts until `limit` bytes are taken (the last one cut)."""
    taken = 0
    for t in texts:
        if taken >= limit:
            return
        t = t if taken + len(t) <= limit else t[:limit - taken]
        taken += len(t)
        yield t


_WORKER_TOK = None


def _worker_init(info: dict, files: dict) -> None:
    global _WORKER_TOK
    import os
    import tempfile

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    with tempfile.TemporaryDirectory() as d:
        for name, text in files.items():
            Path(d, name).write_text(text)
        _WORKER_TOK = load_tokenizer(info, d)


def _worker_encode(batch: list[tuple[str, str]]):
    return [(name, _WORKER_TOK.encode(text), len(text.encode("utf-8", "surrogatepass"))) for name, text in batch]


def _batches(docs, batch_bytes: int = 4 << 20):
    batch, size = [], 0
    for name, text in docs:
        batch.append((name, text))
        size += len(text)
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _tokenize(tok: Tokenizer, docs, workers: int | None):
    """(name, ids, bytes) per document in order.  The byte tokenizer runs here (it is a copy); others in
    `workers` processes (default: one per core), at most two batches each in flight, so memory stays bounded."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = workers if workers is not None else (os.cpu_count() or 1)
    if isinstance(tok, ByteTokenizer) or workers <= 1:
        for name, text in docs:
            yield name, tok.encode(text), len(text.encode("utf-8", "surrogatepass"))
        return
    from collections import deque

    with ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(tok.to_dict(), tokenizer_files(tok))) as ex:
        pending = deque()
        for batch in _batches(docs):
            pending.append(ex.submit(_worker_encode, batch))
            if len(pending) >= 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


class _Meter:
    """Progress of the second pass on stderr: MB done, MB/s, ETA; every 2 s at most."""

    def __init__(self, total: int, log):
        self.total, self.done_bytes, self.t0, self.log = total, 0, time.perf_counter(), log
        self.last = self.t0

    def update(self, n: int) -> None:
        self.done_bytes += n
        now = time.perf_counter()
        if now - self.last >= 2.0:
            self.last = now
            rate = self.done_bytes / max(now - self.t0, 1e-9)
            eta = (self.total - self.done_bytes) / max(rate, 1e-9)
            print(f"  tokenized {self.done_bytes / 1e6:,.0f} / {self.total / 1e6:,.0f} MB, {rate / 1e6:.1f} MB/s, "
                  f"~{eta:.0f}s left", file=sys.stderr, flush=True)

    def done(self) -> None:
        s = time.perf_counter() - self.t0
        self.log(f"  tokenized {self.done_bytes / 1e6:,.1f} MB in {s:.1f}s ({self.done_bytes / 1e6 / max(s, 1e-9):.1f} MB/s)")


class _SplitWriter:
    """Appends a split's documents (separator id, then the ids) to shard files of at most `shard_tokens` tokens,
    with the SHA-256 of each shard and of the whole split, and an index of (offset, tokens) per document."""

    def __init__(self, folder: Path, split: str, dtype: str, shard_tokens: int):
        self.folder, self.split, self.dtype, self.limit = folder, split, np.dtype(dtype), shard_tokens
        self.shards, self.tokens, self.documents = [], 0, 0
        self.h, self.f, self.fh, self.in_shard = hashlib.sha256(), None, None, 0
        self.index = open(folder / f"{split}.idx", "wb")

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self.shards.append({"file": name, "tokens": 0})
        self.f, self.fh, self.in_shard = open(self.folder / name, "wb"), hashlib.sha256(), 0

    def _finish_shard(self) -> None:
        if self.f is not None:
            self.f.close()
            self.shards[-1].update(tokens=self.in_shard, sha256=self.fh.hexdigest())
            self.f = None

    def add(self, sep_id: int, ids: np.ndarray) -> int:
        """-> the document's offset in the split (after its separator)."""
        if self.f is None or (self.in_shard and self.in_shard + len(ids) + 1 > self.limit):
            self._finish_shard()
            self._open()
        data = np.concatenate([np.array([sep_id]), ids]).astype(self.dtype).tobytes()
        self.f.write(data)
        self.h.update(data)
        self.fh.update(data)
        offset = self.tokens + 1
        self.index.write(np.array([offset, len(ids)], dtype=np.int64).tobytes())
        self.tokens += len(ids) + 1
        self.in_shard += len(ids) + 1
        self.documents += 1
        return offset

    def close(self) -> dict:
        if self.f is None:
            self._open()  # an empty split still has its (empty) shard
        self._finish_shard()
        self.index.close()
        return {"shards": self.shards, "index": f"{self.split}.idx", "documents": self.documents,
                "tokens": self.tokens, "sha256": self.h.hexdigest()}


class ShardedTokens:
    """A split stored in several shard files, read as one sequence of token ids: `len()` and slices (`[a:b]`)
    across shard boundaries; each shard is a read-only memory map."""

    def __init__(self, maps: list[np.ndarray]):
        self.maps = maps
        self.starts = np.cumsum([0] + [len(m) for m in maps])
        self.dtype = maps[0].dtype

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            key = int(key) + (len(self) if key < 0 else 0)
            i = int(np.searchsorted(self.starts, key, side="right")) - 1
            return self.maps[i][key - self.starts[i]]
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("ShardedTokens takes an index or a contiguous slice")
        a, b, _ = key.indices(len(self))
        parts = []
        for i, m in enumerate(self.maps):
            lo, hi = max(a, self.starts[i]), min(b, self.starts[i + 1])
            if lo < hi:
                parts.append(m[lo - self.starts[i]:hi - self.starts[i]])
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else self.maps[0][:0]

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate(self.maps) if len(self.maps) > 1 else np.asarray(self.maps[0])
        return out.astype(dtype) if dtype is not None else out


class TokenCorpus:
    """A prepared corpus: `tokens(split)` is a read-only memory map (or ShardedTokens over several);
    `document(split, i)` one document's ids.  Reads format versions 1 and 2."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        file = self.folder / "manifest.json"
        m = read_json(file, ConfigError, "prepared corpus (run `bmojo data prepare`)")
        if m.get("format") != FORMAT or m.get("version") not in READABLE:
            raise ConfigError(f"{file}: not a {FORMAT} manifest of version {' or '.join(map(str, READABLE))}")
        self.manifest = m
        self.dtype = self._check_dtype(file, m)
        for split in m["splits"]:
            for path, tokens in self._files(split):
                size = path.stat().st_size if path.is_file() else -1
                if size != tokens * self.dtype.itemsize:
                    raise ConfigError(f"{path}: {size} bytes, the manifest says {tokens} tokens of {self.dtype}; "
                                      "re-run `bmojo data prepare --force`")
        self._tok, self._offsets = None, {}

    def _files(self, split: str) -> list[tuple[Path, int]]:
        """(path, tokens) of each token file of the split, in order; a path outside the folder is refused."""
        info = self.manifest["splits"][split]
        where = f"{self.folder / 'manifest.json'}: splits.{split}"
        if not isinstance(info, dict):
            raise ConfigError(f"{where}: not a valid manifest; re-run `bmojo data prepare --force`")
        if self.manifest["version"] == 1:
            return [(inside(self.folder, info.get("file"), f"{where}.file"), info["tokens"])]
        shards = info.get("shards")
        if not isinstance(shards, list) or not shards:
            raise ConfigError(f"{where}.shards: missing; re-run `bmojo data prepare --force`")
        return [(inside(self.folder, s.get("file"), f"{where}.shards.file"), s["tokens"]) for s in shards]

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

    def tokens(self, split: str):
        if split not in self.manifest["splits"]:
            raise ConfigError(f"split {split!r}: expected one of {list(self.manifest['splits'])}")
        maps = [np.memmap(path, dtype=self.dtype, mode="r") if n else np.zeros(0, self.dtype)
                for path, n in self._files(split)]
        return maps[0] if len(maps) == 1 else ShardedTokens(maps)

    def documents(self, split: str) -> list[dict]:
        """{"name", "split", "offset", "tokens"} per document of the split, in order."""
        if self.manifest["version"] == 1:
            return [d for d in self.manifest["documents"] if d["split"] == split]
        with open(inside(self.folder, self.manifest["documents_file"], "documents_file")) as f:
            return [d for d in map(json.loads, f) if d["split"] == split]

    def offsets(self, split: str) -> np.ndarray:
        """(documents, 2) int64: each document's offset in the split and its token count (read once per split)."""
        if split not in self._offsets:
            self._offsets[split] = self._read_offsets(split)
        return self._offsets[split]

    def _read_offsets(self, split: str) -> np.ndarray:
        if self.manifest["version"] == 1:
            return np.array([[d["offset"], d["tokens"]] for d in self.documents(split)], dtype=np.int64).reshape(-1, 2)
        index = inside(self.folder, self.manifest["splits"][split]["index"], f"splits.{split}.index")
        return np.fromfile(index, dtype=np.int64).reshape(-1, 2)

    def document(self, split: str, i: int) -> np.ndarray:
        o, n = self.offsets(split)[i]
        return self.tokens(split)[o:o + n]

    def split_documents(self, split: str) -> list[np.ndarray]:
        """Every document of the split as token ids (views into the memory map)."""
        tokens = self.tokens(split)
        return [tokens[o:o + n] for o, n in self.offsets(split)]

    def verify(self) -> None:
        """Check every token file's SHA-256 (and each split's, over its shards) against the manifest, a shard at a
        time."""
        for split, info in self.manifest["splits"].items():
            whole = hashlib.sha256()
            shards = info.get("shards") or [{"file": info["file"], "sha256": None}]
            for s, (path, _) in zip(shards, self._files(split)):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 24), b""):
                        h.update(block)
                        whole.update(block)
                if s.get("sha256") is not None and h.hexdigest() != s["sha256"]:
                    raise ConfigError(f"{path}: SHA-256 does not match the manifest (corrupt?)")
            if whole.hexdigest() != info["sha256"]:
                raise ConfigError(f"{self.folder / split}: SHA-256 does not match the manifest (corrupt?)")

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


def _source(corpus: str, source: str | None, root: Path, text_field: str = "text") -> Source:
    if corpus == "shakespeare":
        return BUILTIN[corpus](source, cache=root / "_sources")
    if source is not None:
        raise ConfigError(f"--source applies to --corpus shakespeare only, not {corpus!r}")
    return BUILTIN[corpus]() if corpus in BUILTIN else path_source(corpus, text_field)


def _dtype(vocab_size: int) -> str:
    return "uint8" if vocab_size <= 256 else "uint16" if vocab_size <= 65536 else "uint32"
