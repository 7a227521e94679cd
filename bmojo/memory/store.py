"""The in-storage memory (DESIGN section 5): every token that leaves a B'MOJO layer's eidetic pool (an entry
evicted from the memory, or a chunk candidate that did not get in; with StoreConfig.admit="memory" only the
former) is appended to a store on disk, and later queries retrieve their best matches from it.

On disk, a store is one folder:
  store.json       what it is for: the model's fingerprint, the B layers with their (kv heads, head width),
                   the number of sequences (rows) and the value dtype.  Reopening with another model's shapes
                   is an error naming the field.
  layer{L}.bin     append-only fixed-size records, one per entry: row (int32), the record's CRC-32 (uint32, over
                   the record with this field zero; 0 in stores written before it), position (int64), key and
                   value (kv_heads, head_dim) each.  Keys carry RoPE at their own position, as in the memory.
  commits.log      append-only 24-byte commit records (magic, layer, entry count after the write, CRC-32 of the
                   appended records, CRC-32 of the commit record).  A layer's committed entries are those counted
                   by its last valid commit; bytes past them are the write that was in flight at a crash.  A
                   commit whose count is not above the layer's previous one is a cut (Store.truncate, or a
                   recovery), and its data CRC covers all the layer's records.
Writes go to a background thread (`durable=True` fsyncs data before the commit and the commit itself), so the
decoding loop never waits on the disk; the search index (bmojo.memory.index) is updated before `add` returns,
so a chunk sees every entry evicted before it whether or not it has reached the disk yet.  Values are read back
from the file (or from the not-yet-written tail kept in RAM): RAM holds the index (keys, their 8-bit codes
and positions) only.
Opening a store after a crash truncates each layer to its last commit and reports what was dropped; it also
verifies every committed record against its commit's CRC (the record's own CRC names which one): a record
corrupted on disk is reported and dropped with everything after it in its layer, never served.
"""
from __future__ import annotations

import ctypes
import functools
import json
import mmap
import os
import queue
import shutil
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bmojo.memory.errors import StoreError
from bmojo.memory.index import LayerIndex
from bmojo.utils.jsonfile import read_json

FORMAT, VERSION = "bmojo-store", 1
crash_hook = None  # tests set a callable(point) that may end the process at a named point of a write
COMMIT = struct.Struct("<IIQII")  # magic, layer, count, data crc, record crc (over the first 20 bytes)
MAGIC = 0x53434D42  # "BMCS"
DTYPES = {"float32": np.float32, "float16": np.float16}


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


def record_dtype(kv_heads: int, head_dim: int, dtype: str) -> np.dtype:
    f = DTYPES[dtype]
    return np.dtype([("row", "<i4"), ("crc", "<u4"), ("pos", "<i8"),
                     ("k", f, (kv_heads, head_dim)), ("v", f, (kv_heads, head_dim))])


def record_crc(rec: bytes) -> int:
    """The CRC-32 of one record's bytes with its crc field (bytes 4..8) taken as zero."""
    return zlib.crc32(rec[8:], zlib.crc32(rec[:4] + b"\0\0\0\0"))


def seal(recs: np.ndarray) -> np.ndarray:
    """Write each record's own CRC into its crc field (in place) and return the records."""
    recs["crc"] = 0
    raw = recs.tobytes()
    size = recs.dtype.itemsize
    recs["crc"] = [zlib.crc32(raw[i:i + size]) for i in range(0, len(raw), size)]
    return recs


def make_spec(fingerprint: str, layers: dict[int, tuple[int, int]], rows: int = 1, dtype: str = "float32") -> dict:
    """A store's description: the model fingerprint, {layer: (kv heads, head width)}, sequences, value dtype."""
    if dtype not in DTYPES:
        raise StoreError(f"store dtype={dtype!r}: allowed: {sorted(DTYPES)}")
    if not (isinstance(rows, int) and rows > 0):
        raise StoreError(f"store rows={rows!r}: must be a positive integer (the batch size)")
    return {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "rows": rows, "dtype": dtype,
            "layers": {str(i): {"kv_heads": hk, "head_dim": dh} for i, (hk, dh) in sorted(layers.items())}}


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
        head = struct.pack("<IIQI", MAGIC, layer, count, data_crc)
        self._commits.write(head + struct.pack("<I", zlib.crc32(head)))
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
            self.recovered.append({"file": ls.path.name, "layer": i, "dropped_entries": len(ls) - n,
                                   "reason": reason})
            self._files[i].close()
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


def check_spec(folder: Path, have: dict, want: dict) -> None:
    """A clear error when the folder's store was made for something else."""
    if have.get("format") != FORMAT:
        raise StoreError(f"{folder}/store.json: format={have.get('format')!r}, expected {FORMAT!r}; not a bmojo store")
    if have.get("version") != VERSION:
        raise StoreError(f"{folder}/store.json: version={have.get('version')!r}; this bmojo reads version {VERSION}")
    for field in ("layers", "rows", "dtype", "fingerprint"):
        if have.get(field) != want[field]:
            raise StoreError(f"{folder}/store.json: {field}={have.get(field)!r}, but this model and run need "
                             f"{field}={want[field]!r} (a store made for another model or batch size; use a "
                             "new folder or clear this one)")


def recover(folder: Path, spec: dict) -> tuple[dict[int, int], list[dict]]:
    """Per layer, the entry count of its last valid commit, with every committed record verified: truncates what
    lies past the last commit (and a torn or corrupt commit record and all after it), drops a layer's records
    from the first one that fails its CRC, and reports each drop."""
    log = folder / "commits.log"
    raw = log.read_bytes() if log.exists() else b""
    committed: dict[int, int] = {}
    segments: dict[int, list] = {}  # layer -> [(first record, end, CRC of their bytes)], in file order
    good = 0
    for off in range(0, len(raw) - COMMIT.size + 1, COMMIT.size):
        magic, layer, count, data_crc, crc = COMMIT.unpack_from(raw, off)
        if magic != MAGIC or crc != zlib.crc32(raw[off:off + COMMIT.size - 4]) or str(layer) not in spec["layers"]:
            break
        prev = committed.get(layer, 0)
        if count > prev:
            segments.setdefault(layer, []).append((prev, count, data_crc))
        else:  # a cut: the CRC covers every record kept (stores made before cuts carried one: 0, unchecked)
            segments[layer] = [(0, count, data_crc if data_crc or count == 0 else None)]
        committed[layer] = count
        good = off + COMMIT.size
    report = []
    if good < len(raw):
        report.append({"file": log.name, "dropped_bytes": len(raw) - good,
                       "reason": "a commit record torn or failing its CRC (and any after it)"})
        with open(log, "r+b") as f:
            f.truncate(good)
    for key, d in spec["layers"].items():
        layer, path = int(key), folder / f"layer{key}.bin"
        size = record_dtype(d["kv_heads"], d["head_dim"], spec["dtype"]).itemsize
        have = path.stat().st_size if path.exists() else 0
        n, segs, cut = committed.get(layer, 0), segments.get(layer, []), False
        if have < n * size:  # cut short outside bmojo: keep the whole records there are, checked one by one
            whole = have // size
            report.append({"file": path.name, "layer": layer, "dropped_entries": n - whole,
                           "reason": f"the file ends inside record {whole} (of {n} committed): cut short outside "
                                     "bmojo"})
            segs = [(a, min(b, whole), crc if b <= whole else "own") for a, b, crc in segs if a < whole]
            n, cut = whole, True
        elif have > n * size:
            report.append({"file": path.name, "layer": layer, "dropped_entries": -(-(have - n * size) // size),
                           "dropped_bytes": have - n * size, "reason": "the write in flight at a crash"})
        bad = _first_corrupt(path, size, segs)
        if bad is not None:
            report.append({"file": path.name, "layer": layer, "dropped_entries": n - bad,
                           "reason": f"record {bad} (entry {bad} of {path.name}) fails its CRC: corrupted on disk; "
                                     f"it and the {n - bad - 1} after it are dropped"})
            n, cut = bad, True
        if have > n * size:
            with open(path, "r+b") as f:
                f.truncate(n * size)
        if cut:  # commit the cut, so the next open agrees
            kept = path.read_bytes() if path.exists() else b""
            if not path.exists():
                path.touch()
            head = struct.pack("<IIQI", MAGIC, layer, n, zlib.crc32(kept))
            with open(log, "ab") as f:
                f.write(head + struct.pack("<I", zlib.crc32(head)))
            committed[layer] = n
    return committed, report


def _first_corrupt(path: Path, size: int, segments: list) -> int | None:
    """The first record of the layer file that fails its commit's CRC, or None.  A failing commit is searched
    record by record with each record's own CRC; a record without one (0) is taken as the commit's first.  A
    segment whose CRC is "own" (a commit cut short) is checked by its records' own CRCs only."""
    if not segments:
        return None
    data = path.read_bytes()
    for first, end, crc in segments:
        chunk = data[first * size:end * size]
        if crc is None or (crc != "own" and zlib.crc32(chunk) == crc):
            continue
        for i in range(end - first):
            rec = chunk[i * size:(i + 1) * size]
            own = int.from_bytes(rec[4:8], "little")
            if own == 0 or record_crc(rec) != own:
                return first + i
        if crc != "own":
            return first  # every record passes its own CRC but not the commit's: distrust the whole commit
    return None


def clear(folder) -> None:
    """Delete a store folder (only if it is one)."""
    folder = Path(folder)
    if not folder.exists():
        return
    meta = read_json(folder / "store.json", StoreError, "bmojo store")
    if meta.get("format") != FORMAT:
        raise StoreError(f"{folder}/store.json: format={meta.get('format')!r}; not a bmojo store, not deleting it")
    shutil.rmtree(folder)


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def describe(folder) -> dict:
    """Size of a store on disk without loading it: entries per layer and bytes."""
    folder = Path(folder)
    meta = read_json(folder / "store.json", StoreError, "bmojo store")
    if meta.get("format") != FORMAT:
        raise StoreError(f"{folder}/store.json: format={meta.get('format')!r}; not a bmojo store")
    entries = {}
    for key, d in meta["layers"].items():
        p = folder / f"layer{key}.bin"
        entries[key] = (p.stat().st_size if p.exists() else 0) // record_dtype(d["kv_heads"], d["head_dim"],
                                                                               meta["dtype"]).itemsize
    disk = disk_bytes(folder)
    return {"folder": str(folder), "fingerprint": meta["fingerprint"], "rows": meta["rows"], "entries": entries,
            "disk_bytes": disk, "has_session": (folder / "session.safetensors").exists()}
