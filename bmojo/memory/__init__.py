"""The long-term, in-storage memory of B'MOJO layers (docs/store.md): bmojo.memory.store (the live
store) and bmojo.memory.disk (its format and recovery)."""
from bmojo.memory.index import LayerIndex, ann_available
from bmojo.memory.disk import clear, describe, store_files, verify
from bmojo.memory.store import LayerStore, Store, StoreConfig, StoreError

__all__ = ["LayerIndex", "LayerStore", "Store", "StoreConfig", "StoreError", "ann_available", "clear", "describe", "store_files", "verify"]
