"""A reusable memory: the decode state saved beside its store, so a later call continues the same stream.

`save_session(store, state)` writes session.safetensors into the store folder (atomically: temporary file,
fsync, rename) after flushing the store; its metadata records the position, the model fingerprint and each
layer's store entry count.  `load_session(store, model)` rebuilds the state, attaches the store, and cuts the
store back to the saved counts when a later run wrote entries but died before saving its session (reported in
store.recovered).  Nothing is unpickled: tensors are safetensors, the rest is JSON.
"""
from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bmojo.layers.state import LayerState
from bmojo.memory.store import Store, StoreError

SESSION = "session.safetensors"


def _flatten(obj, prefix: str, tensors: dict, ints: dict) -> None:
    for f in fields(obj):
        v = getattr(obj, f.name)
        key = f"{prefix}.{f.name}"
        if isinstance(v, torch.Tensor):
            tensors[key] = v.detach().contiguous().cpu()
        elif isinstance(v, LayerState):
            _flatten(v, key, tensors, ints)
        elif isinstance(v, int) and not isinstance(v, bool):
            ints[key] = v


def _restore(obj, prefix: str, tensors: dict, ints: dict, path) -> None:
    for f in fields(obj):
        v = getattr(obj, f.name)
        key = f"{prefix}.{f.name}"
        if isinstance(v, torch.Tensor):
            t = tensors.get(key)
            if t is None or t.shape != v.shape:
                got = "missing" if t is None else f"shape {tuple(t.shape)}"
                raise StoreError(f"{path}: state tensor {key} is {got}, this model needs {tuple(v.shape)}")
            v.copy_(t)
        elif isinstance(v, LayerState):
            _restore(v, key, tensors, ints, path)
        elif key in ints:
            setattr(obj, f.name, ints[key])


def save_session(store: Store, state, weights: str | None = None) -> None:
    """Flush the store, then write the state (ModelState) beside it; `weights` (the SHA-256 of the model's weights
    file) ties the session to those weights, not only to their config."""
    store.flush()
    tensors, ints = {}, {}
    for i, s in enumerate(state.layers):
        _flatten(s, f"layer{i}", tensors, ints)
    meta = {"pos": state.pos, "fingerprint": state.fingerprint, "weights": weights, "ints": ints,
            "store_entries": {str(i): len(ls) for i, ls in store.layers.items()}}
    path = store.folder / SESSION
    tmp = path.with_name(f".{SESSION}.tmp")
    save_file(tensors, str(tmp), metadata={"bmojo_session": json.dumps(meta)})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_session(folder, model, weights: str | None = None) -> dict | None:
    """The metadata of the session saved in `folder` (None when there is none), refused when it was written by
    another model: another config (fingerprint) or, with `weights`, other weights.  Reads the header only, so a
    command can check before it opens (and recovers) the store."""
    path = Path(folder) / SESSION
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            meta = json.loads(json.loads(f.read(n))["__metadata__"]["bmojo_session"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{path}: not a readable bmojo session ({e})") from None
    if meta.get("fingerprint") != model.fingerprint:
        raise StoreError(f"{path}: fingerprint={meta.get('fingerprint')!r}, this model's is {model.fingerprint!r}")
    if weights is not None and meta.get("weights") not in (None, weights):
        raise StoreError(f"{path}: the session was written by the weights with SHA-256 {meta['weights'][:16]}..., "
                         f"this checkpoint's are {weights[:16]}...: a session continues only under the model that "
                         "wrote it (use another --storage folder)")
    return meta


def load_session(store: Store, model, device=None, weights: str | None = None):
    """The saved state with the store attached, or a fresh one when the folder has no session.  A session saved
    with other weights (`weights`: the SHA-256 of this model's weights file) is refused before anything changes."""
    path = store.folder / SESSION
    if not path.exists():
        if any(len(ls) for ls in store.layers.values()):
            raise StoreError(f"{store.folder}: holds entries but no {SESSION} (the run that wrote them did not "
                             "finish); clear it with `bmojo memory clear` to start again")
        return model.init_state(store.rows, device, store=store)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise StoreError(f"{path}: not a readable bmojo session ({e})") from None
    meta = check_session(store.folder, model, weights)
    # entries past the saved counts come from a call that did not finish; fewer are what recovery dropped (reported)
    store.truncate({int(k): min(v, len(store.layers[int(k)])) for k, v in meta["store_entries"].items()
                    if int(k) in store.layers},
                   reason=f"written after the session saved at {meta['pos']} tokens, by a call that did not finish")
    state = model.init_state(store.rows, device, store=store)
    for i, s in enumerate(state.layers):
        _restore(s, f"layer{i}", tensors, meta["ints"], path)
    state.pos = meta["pos"]
    return state
