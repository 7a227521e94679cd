"""The long-term, in-storage memory of B'MOJO layers (DESIGN section 5): see bmojo.memory.store."""
from bmojo.memory.index import LayerIndex, ann_available
from bmojo.memory.store import LayerStore, Store, StoreConfig, StoreError, clear, describe

__all__ = ["LayerIndex", "LayerStore", "Store", "StoreConfig", "StoreError", "ann_available", "clear", "describe"]
