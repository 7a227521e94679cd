"""File names read from configs and manifests stay inside the folder they name files of; folders a command
writes are not ones a user already filled; what it writes is as readable as any file the user makes."""
from __future__ import annotations

import os
from pathlib import Path

from bmojo.config import ConfigError


def inside(root: str | Path, name, what: str) -> Path:
    """root / name, or a ConfigError naming `what` when `name` is not a relative path that stays inside root
    (an absolute path, `..`, or a link that leads out)."""
    root = Path(root)
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        raise ConfigError(f"{what}={name!r}: must be a relative file name inside {root}")
    path = root / name
    base = root.resolve()
    if not path.resolve().is_relative_to(base):
        raise ConfigError(f"{what}={name!r}: leads outside {root}; refusing to read or write it")
    return path


WRITTEN = ".bmojo-written.json"  # the names a bmojo command wrote in a folder (what --overwrite may replace)


def refuse_filled(folder: str | Path, overwrite: bool, what: str = "the output folder") -> None:
    """A ConfigError if `folder` exists and is not empty, unless `overwrite` (the caller then replaces it)."""
    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ConfigError(f"{what} {folder} already exists and is not empty; choose another or pass --overwrite "
                          "to replace what is there")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {folder} is a file, not a folder")


def claim_output(folder: str | Path, overwrite: bool, what: str, known=()) -> set[str]:
    """The one --overwrite rule: a folder that holds files is refused unless `overwrite`; then everything an
    earlier bmojo command recorded writing there (WRITTEN; `known`: the names it writes, for folders made before
    the record) is removed, so nothing stale mixes with the new output, and nothing else (the user's files) is
    touched.  -> the names left in the folder (pass them to record_output)."""
    import shutil

    refuse_filled(folder, overwrite, what)
    folder = Path(folder)
    if not folder.is_dir():
        return set()
    ours = set(_written(folder)) | {n for n in known if (folder / n).exists()}
    for name in ours:
        p = inside(folder, name, f"{folder / WRITTEN} entry")
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    (folder / WRITTEN).unlink(missing_ok=True)
    return {p.name for p in folder.iterdir()}


def record_output(folder: str | Path, before: set[str]) -> None:
    """Record in WRITTEN every name in `folder` that was not there `before` (what this command wrote)."""
    import json

    folder = Path(folder)
    names = sorted(({p.name for p in folder.iterdir()} - set(before) - {WRITTEN}) | set(_written(folder)))
    (folder / WRITTEN).write_text(json.dumps(names))


def _written(folder: Path) -> list[str]:
    import json

    try:
        names = json.loads((folder / WRITTEN).read_text())
    except (OSError, ValueError):
        return []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def usual_modes(folder: str | Path) -> None:
    """Give the files of `folder` the mode a new file gets here (0666 less the umask): safetensors and some
    writers create theirs 0600, which other users of a shared model folder could not read."""
    umask = os.umask(0)
    os.umask(umask)
    for f in Path(folder).iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)
