"""The store's error type, in its own module so that the index and the store both import it (no import circle)."""
from __future__ import annotations

from bmojo.config import ConfigError


class StoreError(ConfigError):
    """A store folder that cannot be used as asked; the message names the folder and the field."""
