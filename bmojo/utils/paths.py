"""File names read from configs and manifests stay inside the folder they name files of."""
from __future__ import annotations

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
