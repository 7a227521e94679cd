"""Build a C++ extension once per source hash, safely across processes.

torch's JIT loader builds in a folder named after the extension and guards it with a lock file that a process
killed mid-build leaves behind, after which every later load waits on it forever, in silence; and it rebuilds
whenever the source's path changes (another checkout).  Here:
  - the build folder is named by a hash of the source text, the flags and the torch it compiles against (version
    and path), and the source is copied into it, so any checkout with the same source and environment shares one
    build (built once);
  - an OS lock (flock, released by the kernel when its holder dies, however it dies) serialises builders; a
    process that has to wait says so within a few seconds, naming the lock and its holder;
  - while holding it, a lock file torch left behind is stale by construction and is removed.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger("bmojo")
SAY_AFTER = 2.0  # seconds of waiting before saying what is being waited on


def build_folder(name: str, source: Path, flags: list[str]) -> Path:
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    h = hashlib.sha256(source.read_bytes())
    # the torch it compiles against: its version and its headers' path (another environment is another build,
    # which torch's loader would otherwise redo in place each time the two alternate)
    h.update(repr((flags, torch.__version__, str(Path(torch.__file__).parent))).encode())
    return Path(get_default_build_root()) / f"{name}-{h.hexdigest()[:12]}"


def load_once(name: str, source: Path, flags: list[str], say=None):
    """The compiled extension of `source` (a module), built on first use; errors propagate as torch raises them."""
    from torch.utils.cpp_extension import load

    say = say or (lambda msg: log.warning("bmojo: %s", msg))
    folder = build_folder(name, source, flags)
    folder.mkdir(parents=True, exist_ok=True)
    with _Flock(folder / "bmojo.lock", say, f"the build of {name} in {folder}"):
        stale = folder / "lock"  # torch's FileBaton: nobody else can be building here while we hold the flock
        if stale.exists():
            stale.unlink()
        src = folder / source.name
        if not src.exists() or src.read_bytes() != source.read_bytes():
            tmp = folder / f".{source.name}.tmp"
            shutil.copyfile(source, tmp)
            os.replace(tmp, src)
        if not list(folder.glob("*.so")):
            say(f"compiling {name} (once per machine and source version, about a minute)")
        return load(name=name, sources=[str(src)], extra_cflags=flags, build_directory=str(folder), verbose=False)


class _Flock:
    """An exclusive flock on `path`; a holder that died has released it.  Waiting is announced after SAY_AFTER
    seconds, then every 30 s, with the holder's pid when it wrote one."""

    def __init__(self, path: Path, say, what: str):
        self.path, self.say, self.what = path, say, what

    def __enter__(self):
        self.f = open(self.path, "a+")
        t0, said = time.monotonic(), None
        while True:
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - t0
                if waited >= SAY_AFTER and (said is None or waited - said >= 30):
                    self.f.seek(0)
                    holder = self.f.read().strip() or "unknown"
                    self.say(f"waiting for {self.what}: another process (pid {holder}) holds {self.path} "
                             f"({waited:.0f}s so far)")
                    said = waited
                time.sleep(0.2)
        self.f.seek(0)
        self.f.truncate()
        self.f.write(str(os.getpid()))
        self.f.flush()
        return self

    def __exit__(self, *exc):
        self.f.seek(0)
        self.f.truncate()
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()
