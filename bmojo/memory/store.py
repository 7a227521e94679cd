"""The in-storage memory (docs/store.md): every token that leaves a B'MOJO layer's eidetic pool (an entry
evicted from the memory, or a chunk candidate that did not get in; with StoreConfig.admit="memory" only the
former) is appended to a store on disk, and later queries retrieve their best matches from it.

A store is one folder in the format of bmojo.memory.disk (spec, append-only records, a commit log).  Writes go
to a background thread (`durable=True` fsyncs data before the commit and the commit itself), so the decoding
loop never waits on the disk; the search index (bmojo.memory.index) is updated before `add` returns, so a
chunk sees every entry evicted before it whether or not it has reached the disk yet.  Values are read back
from the file (or from the not-yet-written tail kept in RAM): RAM holds the index (keys, their 8-bit codes
and positions) only.  Opening a store recovers it first (bmojo.memory.disk.recover): each layer is cut to its
last commit and every committed record is verified; what is dropped is listed in `Store.recovered`.
"""
from __future__ import annotations

import ctypes
import functools
import json
import mmap
import os
import queue
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bmojo.memory.disk import check_spec, commit_record, disk_bytes, make_spec, move_aside, recover, \
    record_dtype, seal
from bmojo.memory.errors import StoreError
from bmojo.memory.index import LayerIndex
from bmojo.utils.jsonfile import read_json

crash_hook = None  # tests set a callable(point) that may end the process at a named point of a write


@dataclass
class StoreConfig:
    """How a store is searched and written (not saved with the store: each run may choose)."""

    topk: int = 16  # entries retrieved per query and head
    search: str = "exact"  # exact | ann | auto (ann above ann_threshold entries, when faiss is installed); exact
    # by default: on a trained model's own keys HNSW misses the rare entries that matter (store_recall.py --model)
    ann_threshold: int = 32768
    durable: bool = False  # fsync every write (survives power loss, not just a killed process)
    admit: str = "evicted"  # what a layer stores: every token that leaves its eidetic pool ("evicted": a store with
    # room for everything makes the layer full attention), or only the entries that were in its memory, i.e. chosen
    # by the innovation test, when they are pushed out ("memory": fewer entries, so a faster search)

    def __post_init__(self):
        if not (isinstance(self.topk, int) and self.topk > 0):
            raise StoreError(f"StoreConfig.topk={self.topk!r}: must be a positive integer")
        if self.search not in ("exact", "ann", "auto"):
            raise StoreError(f"StoreConfig.search={self.search!r}: allowed: exact, ann, auto")
        if self.admit not in ("evicted", "memory"):
            raise StoreError(f"StoreConfig.admit={self.admit!r}: allowed: evicted, memory")
        if not (isinstance(self.ann_threshold, int) and self.ann_threshold >= 0):
            raise StoreError(f"StoreConfig.ann_threshold={self.ann_threshold!r}: must be an integer >= 0")


def store_spec(model, rows: int = 1, dtype: str = "float32") -> dict:
    """The spec of a store for `model` (a BMojoLM): one entry per B layer with eidetic memory."""
    layers = {i: (b.mixer.n_kv_heads, b.mixer.head_dim) for i, b in enumerate(model.layers)
              if getattr(b.mixer, "memory_size", 0) > 0}
    if not layers:
        raise StoreError(f"model pattern {model.cfg.pattern!r} has no B'MOJO layer with eidetic memory "
                         "(memory_size > 0): nothing would ever be stored")
    return make_spec(model.fingerprint, layers, rows, dtype)


class _Writer(threading.Thread):
    """Appends records and commits them, in the order they were queued; an error is kept for the caller."""

    def __init__(self, store: "Store"):
        super().__init__(daemon=True, name=f"bmojo-store-writer:{store.folder.name}")
        self.store, self.jobs, self.error = store, queue.Queue(), None

    def run(self):
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    return
                if self.error is None:
                    self.store._write(*job)
            except BaseException as e:  # noqa: BLE001 - reported on the caller's next call
                self.error = e
            finally:
                self.jobs.task_done()


class _FileMap:
    """The records of a growing append-only file, read through one read-only shared map reserved beyond the
    file's end: records are readable as soon as they are written, and the map (whose pages fault in once) is
    remade only when the file outgrows the reservation.  Remaking a map at every write, as np.memmap would,
    faults every page read again and made each decode step's value reads ten times slower.  Where libc's mmap is
    not reachable (not a POSIX system), np.memmap of the current length is used instead."""

    RESERVE = 256 << 20  # the first reservation, in bytes of address space (not RAM); then twice what is needed

    def __init__(self, path: Path, rec: np.dtype):
        self.path, self.rec = path, rec
        self.addr, self.length, self.fd, self.view = None, 0, None, None

    def records(self, n: int) -> np.ndarray:
        """A read-only array of at least the first n records (all of them in the file)."""
        if self.view is not None and len(self.view) >= n:
            return self.view
        libc = _libc()
        if libc is None:
            self.view = np.asarray(np.memmap(self.path, dtype=self.rec, mode="r", shape=(n,)))
            return self.view
        self.close()
        length = -(-max(2 * n * self.rec.itemsize, self.RESERVE) // mmap.PAGESIZE) * mmap.PAGESIZE
        self.fd = os.open(self.path, os.O_RDONLY)
        addr = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, self.fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            os.close(self.fd)
            self.fd = None
            raise OSError(ctypes.get_errno(), f"{self.path}: mmap of {length} bytes failed")
        self.addr, self.length = addr, length
        raw = np.ctypeslib.as_array((ctypes.c_uint8 * length).from_address(addr))
        self.view = raw[:length // self.rec.itemsize * self.rec.itemsize].view(self.rec)
        self.view.flags.writeable = False
        return self.view

    def address(self, n: int) -> int:
        """The address of record 0 in a map that holds (at least) the first n records."""
        view = self.records(n)
        return self.addr if self.addr is not None else view.ctypes.data

    def close(self) -> None:
        self.view = None
        if self.addr is not None:
            _libc().munmap(self.addr, self.length)
            self.addr = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@functools.cache
def _libc():
    """libc with mmap/munmap typed, or None where there is none (Windows)."""
    if not hasattr(mmap, "MAP_SHARED"):
        return None
    try:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                             ctypes.c_int64]
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        return lib
    except (OSError, AttributeError):
        return None


class LayerStore:
    """One layer's entries: the file, the in-RAM search index per row, and the tail not yet on disk."""

    def __init__(self, store: "Store", layer: int, kv_heads: int, head_dim: int, committed: int):
        self.store, self.layer, self.kv_heads, self.head_dim = store, layer, kv_heads, head_dim
        self.rec = record_dtype(kv_heads, head_dim, store.dtype)
        self.path = store.folder / f"layer{layer}.bin"
        self.count = committed  # entries added (on disk + queued)
        self.written = committed  # entries whose commit is on disk
        self.tail: dict[int, np.ndarray] = {}  # first entry id -> records queued, not yet written
        self.lock = threading.Lock()
        self.map = _FileMap(self.path, self.rec)  # the written records, for reading values back
        self.index = [LayerIndex(kv_heads, head_dim, store.cfg) for _ in range(store.rows)]
        if committed:
            recs = np.fromfile(self.path, dtype=self.rec, count=committed)
            for r, ix in enumerate(self.index):
                sel = np.nonzero(recs["row"] == r)[0]
                ix.add(torch.from_numpy(recs["k"][sel].astype(np.float32)), torch.from_numpy(recs["pos"][sel]),
                       torch.from_numpy(sel.astype(np.int64)))

    def __len__(self) -> int:
        return self.count

    def add(self, row: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            left: torch.Tensor | None = None) -> None:
        """Entries of one sequence: pos (n,), k, v (n, Hk, Dh); left (n,): the first position that may read each
        (see bmojo.memory.index).  Searchable at once; written in the background.  A position already stored is
        skipped, so admitting the same evictions twice (a repeated call) changes nothing."""
        new = self.index[row].fresh(pos.cpu().long())
        if not bool(new.all()):
            pos, k, v = pos[new], k[new], v[new]
            left = left[new] if left is not None else None
        n = int(pos.shape[0])
        if n == 0:
            return
        self.store._raise_writer_error()
        recs = np.zeros(n, dtype=self.rec)
        recs["row"], recs["pos"] = row, pos.cpu().numpy()
        recs["k"] = k.detach().float().cpu().numpy()
        recs["v"] = v.detach().float().cpu().numpy()
        first = self.count
        with self.lock:
            self.tail[first] = recs
        self.count += n
        self.index[row].add(torch.from_numpy(recs["k"].astype(np.float32)), pos.cpu().long(),
                            torch.arange(first, first + n), None if left is None else left.cpu())
        self.store._queue(self, first, recs)

    def search(self, row: int, q: torch.Tensor, qpos: torch.Tensor, window: int, k: int, readable_from=None):
        """Sequence `row`'s retrieval for q (n, H, Dh) at positions qpos (n,) in chunks starting at readable_from
        (n,) (None: every entry is readable): the top-k visible entries per head (see LayerIndex.search) ->
        (keys, values (n, H, k, Dh) float32, found (n, H, k) bool)."""
        ix = self.index[row]
        found = None
        if self.store.dtype == "float32" and ix.searches_in_c(q.shape[0]) and not ix.needs_left_mask(readable_from):
            written = self.written  # the C search reads the values of records on disk from the file's map
            base = self.map.address(written) if written else None
            found = ix.search_c(q, qpos, window, k, (base, self.rec.itemsize, self.rec.fields["v"][1], written),
                                scores=False)
        if found is None:  # PyTorch: query blocks, a float16 store, no kernel, or a query that is not finite
            ids, keys, _ = ix.search(q, qpos, window, k, readable_from=readable_from)
            return keys, self.values(ids), ids >= 0
        ids, keys, _, vals, late = found
        if late:  # written to the file after `written` was read: from the queued tail
            vals = torch.where((ids >= written)[..., None], self.values(ids), vals)
        return keys, vals, ids >= 0

    def values(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (..., H, K) entry ids retrieved for H query heads (-1: none) -> their values (..., H, K, Dh)
        float32 (query head h reads kv head h // (H / kv_heads)), from the file or from the queued tail."""
        H = ids.shape[-2]
        flat = ids.clamp(min=0).numpy()
        heads = np.broadcast_to((np.arange(H) // (H // self.kv_heads))[:, None], flat.shape)
        written = self.written
        if flat.max(initial=0) < written:  # the usual case: all on disk
            return torch.from_numpy(self._values_on_disk(written)[flat, heads])
        with self.lock:
            written, tail = self.written, list(self.tail.items())
        out = np.empty((*flat.shape, self.head_dim), dtype=np.float32)
        on_disk = flat < written
        if on_disk.any():
            out[on_disk] = self._values_on_disk(written)[flat[on_disk], heads[on_disk]]
        for first, recs in tail:
            sel = (flat >= first) & (flat < first + len(recs))
            if sel.any():
                out[sel] = recs["v"][flat[sel] - first, heads[sel]]
        return torch.from_numpy(out)

    def _values_on_disk(self, n: int):
        """The value field of (at least) the first n records, from the file's map."""
        return self.map.records(n)["v"]

    def nbytes_index(self) -> int:
        return sum(ix.nbytes() for ix in self.index)


class Store:
    """A long-term store for one model and `rows` sequences; see the module doc for the format.

    Store.open(folder, model, rows) creates the folder or reopens it (checking it was made for the same
    shapes); after a crash the uncommitted tail of each layer is dropped and listed in `self.recovered`."""

    def __init__(self, folder: Path, spec: dict, cfg: StoreConfig, committed: dict[int, int]):
        self.folder, self.spec, self.cfg = folder, spec, cfg
        self.rows, self.dtype = spec["rows"], spec["dtype"]
        self.recovered: list[dict] = []
        self._commits = open(folder / "commits.log", "ab")
        self.layers = {int(k): LayerStore(self, int(k), d["kv_heads"], d["head_dim"], committed.get(int(k), 0))
                       for k, d in spec["layers"].items()}
        self._files = {i: open(ls.path, "ab") for i, ls in self.layers.items()}
        self._writer = _Writer(self)
        self._writer.start()

    # ---- opening ------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder, spec: dict, cfg: StoreConfig | None = None) -> "Store":
        """Create the store described by `spec` (see make_spec / store_spec) in `folder`, or reopen it."""
        folder = Path(folder)
        cfg = cfg or StoreConfig()
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"{folder}: exists and is not a folder")
        meta = folder / "store.json"
        if not meta.exists():
            if folder.exists() and any(folder.iterdir()):
                raise StoreError(f"{folder}: not empty and has no store.json; not a bmojo store (refusing to write "
                                 "into it)")
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / ".store.json.tmp"
            tmp.write_text(json.dumps(spec, indent=1))
            os.replace(tmp, meta)
            return cls(folder, spec, cfg, {})
        have = read_json(meta, StoreError, "bmojo store")
        check_spec(folder, have, spec)
        committed, report = recover(folder, have)
        store = cls(folder, have, cfg, committed)
        store.recovered = report
        return store

    @classmethod
    def for_model(cls, folder, model, rows: int = 1, cfg: StoreConfig | None = None,
                  dtype: str = "float32") -> "Store":
        return cls.open(folder, store_spec(model, rows, dtype), cfg)

    # ---- writing ------------------------------------------------------------------------------------------
    def layer(self, i: int) -> LayerStore:
        return self.layers[i]

    def _queue(self, ls: LayerStore, first: int, recs: np.ndarray) -> None:
        self._writer.jobs.put((ls, first, recs))

    def _write(self, ls: LayerStore, first: int, recs: np.ndarray) -> None:
        data = seal(recs).tobytes()
        f = self._files[ls.layer]
        f.write(data)
        f.flush()
        if self.cfg.durable:
            os.fsync(f.fileno())
        if crash_hook is not None:  # tests end the process between the data and its commit
            crash_hook("data_written")
        self._commit(ls.layer, first + len(recs), zlib.crc32(data))
        with ls.lock:
            ls.written = first + len(recs)
            ls.tail.pop(first, None)

    def _commit(self, layer: int, count: int, data_crc: int) -> None:
        self._commits.write(commit_record(layer, count, data_crc))
        self._commits.flush()
        if self.cfg.durable:
            os.fsync(self._commits.fileno())

    def _raise_writer_error(self) -> None:
        if self._writer.error is not None:
            raise StoreError(f"{self.folder}: a background write failed: {self._writer.error!r}") \
                from self._writer.error

    def flush(self) -> None:
        """Block until every added entry is on disk and committed."""
        self._writer.jobs.join()
        self._raise_writer_error()

    def close(self) -> None:
        if self._writer.is_alive():
            self.flush()
            self._writer.jobs.put(None)
            self._writer.join()
        for f in (*self._files.values(), self._commits):
            f.close()
        for ls in self.layers.values():
            ls.map.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def truncate(self, counts: dict[int, int], reason: str) -> None:
        """Cut layers back to `counts` entries (e.g. to match a saved session); each cut is reported."""
        self.flush()
        for i, ls in self.layers.items():
            n = counts.get(i, 0)
            if n > len(ls):
                raise StoreError(f"{ls.path}: holds {len(ls)} entries, fewer than the {n} expected ({reason})")
            if n == len(ls):
                continue
            self._files[i].close()
            with open(ls.path, "rb") as f:  # what the cut removes is kept aside, never deleted
                f.seek(n * ls.rec.itemsize)
                where = move_aside(self.folder, [(f"{ls.path.name}.cut", f.read())])
            self.recovered.append({"file": ls.path.name, "layer": i, "dropped_entries": len(ls) - n,
                                   "reason": reason, "kept_in": where})
            with open(ls.path, "r+b") as f:
                f.truncate(n * ls.rec.itemsize)
            self._commit(i, n, zlib.crc32(ls.path.read_bytes()))  # a cut: its CRC covers every record kept
            self._files[i] = open(ls.path, "ab")
            ls.map.close()
            self.layers[i] = LayerStore(self, i, ls.kv_heads, ls.head_dim, n)

    # ---- size ---------------------------------------------------------------------------------------------
    def info(self) -> dict:
        """Entries per layer, bytes on disk and bytes of the in-RAM index."""
        disk = disk_bytes(self.folder)
        return {"folder": str(self.folder), "rows": self.rows, "entries": {str(i): len(ls) for i, ls in
                                                                          self.layers.items()},
                "disk_bytes": disk, "index_bytes": sum(ls.nbytes_index() for ls in self.layers.values())}


