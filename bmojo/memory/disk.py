"""The on-disk format of a long-term store, and its recovery: what a folder holds, how it is checked, cut and
verified.  The live store (writing, searching) is bmojo.memory.store.

A store is one folder:
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
Recovery (on every open) cuts each layer to its last commit and verifies every committed record against its
commit's CRC (the record's own CRC names which one): a record corrupted on disk is reported and dropped with
everything after it in its layer, never served.
"""
from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

from bmojo.memory.errors import StoreError
from bmojo.utils.jsonfile import read_json

FORMAT, VERSION = "bmojo-store", 1
COMMIT = struct.Struct("<IIQII")  # magic, layer, count, data crc, record crc (over the first 20 bytes)
MAGIC = 0x53434D42  # "BMCS"
DTYPES = {"float32": np.float32, "float16": np.float16}


def commit_record(layer: int, count: int, data_crc: int) -> bytes:
    """One commits.log record: `layer` holds `count` entries, the appended (or, for a cut, all) records having
    CRC-32 `data_crc`; the record's own CRC last."""
    head = struct.pack("<IIQI", MAGIC, layer, count, data_crc)
    return head + struct.pack("<I", zlib.crc32(head))


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
            with open(log, "ab") as f:
                f.write(commit_record(layer, n, zlib.crc32(kept)))
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
