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
commit's CRC (the record's own CRC names which one): a record corrupted on disk is reported and dropped, the
intact records around it kept, and nothing is ever served from a bad record.  Every byte recovery takes out is
first copied under dropped/ in the folder, so nothing is lost to it.
"""
from __future__ import annotations

import os
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


DROPPED = "dropped"  # recovery moves every byte it takes out of the store here, never deleting it


def recover(folder: Path, spec: dict, apply: bool = True) -> tuple[dict[int, int], list[dict]]:
    """Per layer, the entry count left after recovery, with every committed record verified, and a report of each
    drop.  Dropped: the bytes past a layer's last commit (the write in flight at a crash), a torn or corrupt commit
    record and all after it, every record that fails its CRC, and every record of a commit whose records pass their
    own CRCs but not the commit's (one record copied over another).  Intact records after a bad one are kept.
    With `apply` each drop is first copied under `dropped/` in the folder (named in the report), then the layer
    file is rewritten with what is kept and the cut committed; without it nothing is written (`verify`)."""
    log = folder / "commits.log"
    raw = log.read_bytes() if log.exists() else b""
    committed, segments, good = _read_commits(raw, spec)
    report, aside = [], []
    if good < len(raw):
        report.append({"file": log.name, "dropped_bytes": len(raw) - good,
                       "reason": "a commit record torn or failing its CRC (and any after it)"})
        aside.append((log.name, raw[good:]))
    rewrites = {}
    for key, d in spec["layers"].items():
        layer, path = int(key), folder / f"layer{key}.bin"
        size = record_dtype(d["kv_heads"], d["head_dim"], spec["dtype"]).itemsize
        data = path.read_bytes() if path.exists() else b""
        kept = _recover_layer(path, layer, data, size, committed.get(layer, 0), segments.get(layer, []), report,
                              aside)
        if kept is not None:
            rewrites[layer], n = kept
            if n is not None:
                committed[layer] = n
    if apply and (aside or rewrites):
        _apply_recovery(folder, log, good if good < len(raw) else None, aside, rewrites, committed, report)
    return committed, report


def _recover_layer(path: Path, layer: int, data: bytes, size: int, n: int, segs: list, report: list, aside: list):
    """One layer file of `n` committed records of `size` bytes: what recovery drops from it (appended to `report`,
    its bytes to `aside`) -> None when nothing, else ((path, the kept bytes or the length to cut to), the new
    committed count or None when it stays)."""
    short = len(data) < n * size
    if short:  # cut short outside bmojo: keep the whole records there are, checked one by one
        whole = len(data) // size
        report.append({"file": path.name, "layer": layer, "dropped_entries": n - whole,
                       "reason": f"the file ends inside record {whole} (of {n} committed): cut short outside "
                                 "bmojo"})
        segs = [(a, min(b, whole), crc if b <= whole else "own") for a, b, crc in segs if a < whole]
        aside.append((f"{path.name}.partial", data[whole * size:]))
        n = whole
    elif len(data) > n * size:
        report.append({"file": path.name, "layer": layer, "dropped_entries": -(-(len(data) - n * size) // size),
                       "dropped_bytes": len(data) - n * size, "reason": "the write in flight at a crash"})
        aside.append((f"{path.name}.uncommitted", data[n * size:]))
    bad = _corrupt_records(data, size, segs)
    if bad:
        report.append({"file": path.name, "layer": layer, "dropped_entries": len(bad), "records": bad,
                       "reason": f"record(s) {_ranges(bad)} of {path.name} fail their CRC or their commit's: "
                                 f"corrupted on disk; dropped, the {n - len(bad)} intact records kept"})
        aside.append((f"{path.name}.corrupt", b"".join(data[i * size:(i + 1) * size] for i in bad)))
    if short or bad:  # records go: the kept ones are rewritten, and the cut committed
        keep = sorted(set(range(n)) - set(bad))
        return (path, b"".join(data[i * size:(i + 1) * size] for i in keep)), len(keep)
    if len(data) > n * size:  # only a crash's uncommitted tail: cut the file, nothing to rewrite or commit
        return (path, n * size), None
    return None


def _apply_recovery(folder: Path, log: Path, log_good: int | None, aside: list, rewrites: dict, committed: dict,
                    report: list) -> None:
    """Move every dropped byte aside, cut the commit log to its last good record (`log_good`, None = whole), and
    rewrite or cut each layer file, committing every rewrite."""
    where = move_aside(folder, aside)
    for r in report:
        r["kept_in"] = where
    if log_good is not None:
        with open(log, "r+b") as f:
            f.truncate(log_good)
    for layer, (path, kept) in rewrites.items():
        if isinstance(kept, int):
            with open(path, "r+b") as f:
                f.truncate(kept)
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(kept)
        os.replace(tmp, path)
        with open(log, "ab") as f:  # commit the cut, so the next open agrees
            f.write(commit_record(layer, committed[layer], zlib.crc32(kept)))


def verify(folder) -> list[dict]:
    """Check every record and commit of a store without changing it -> what opening it would drop ([] = sound)."""
    folder = Path(folder)
    meta = read_json(folder / "store.json", StoreError, "bmojo store")
    if meta.get("format") != FORMAT or not isinstance(meta.get("layers"), dict):
        raise StoreError(f"{folder}/store.json: format={meta.get('format')!r}; not a bmojo store")
    return recover(folder, meta, apply=False)[1]


def _read_commits(raw: bytes, spec: dict):
    """commits.log -> (committed count per layer, the segments each commit covers, the length of its valid part)."""
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
    return committed, segments, good


def move_aside(folder: Path, parts: list[tuple[str, bytes]]) -> str:
    """Write `parts` (name, bytes) into a new folder dropped/<n>/ of the store (fsynced) -> its path."""
    base = folder / DROPPED
    base.mkdir(exist_ok=True)
    n = 1 + max((int(p.name) for p in base.iterdir() if p.name.isdigit()), default=0)
    out = base / str(n)
    out.mkdir()
    for name, data in (p for p in parts if p[1]):
        with open(out / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return str(out)


def _ranges(ix: list[int]) -> str:
    out, i = [], 0
    while i < len(ix):
        j = i
        while j + 1 < len(ix) and ix[j + 1] == ix[j] + 1:
            j += 1
        out.append(str(ix[i]) if i == j else f"{ix[i]}-{ix[j]}")
        i = j + 1
    return ", ".join(out)


def _corrupt_records(data: bytes, size: int, segments: list) -> list[int]:
    """The records of a layer file that must not be served: in a segment failing its commit's CRC, each record
    failing its own CRC (a record without one, 0, counts as failing); if every record passes its own CRC, the
    whole segment (its records were altered together, e.g. one copied over another).  A segment whose CRC is
    "own" (a commit cut short) is checked by its records' own CRCs only."""
    bad = []
    for first, end, crc in segments:
        chunk = data[first * size:end * size]
        if crc is None or (crc != "own" and zlib.crc32(chunk) == crc):
            continue
        own_bad = []
        for i in range(end - first):
            rec = chunk[i * size:(i + 1) * size]
            own = int.from_bytes(rec[4:8], "little")
            if own == 0 or record_crc(rec) != own:
                own_bad.append(first + i)
        bad += own_bad if own_bad or crc == "own" else list(range(first, end))
    return bad


def store_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(the store's own files and folders in `folder`, everything else there)."""
    import re

    own = re.compile(r"^(store\.json|commits\.log|layer\d+\.bin|session\.safetensors|"
                     r"\.(store\.json|layer\d+\.bin|session\.safetensors)\.tmp)$")
    ours, other = [], []
    for p in sorted(folder.iterdir()):
        (ours if (own.match(p.name) and p.is_file()) or (p.name == DROPPED and p.is_dir()) else other).append(p)
    return ours, other


def clear(folder) -> list[Path]:
    """Delete a store: its own files only (also when store.json is damaged), never anything else a user put in the
    folder; the folder itself goes when nothing else is left.  -> the paths left in place.  A folder that is not a
    store (store.json missing, or of another format) is refused."""
    folder = Path(folder)
    if not folder.exists() or not any(folder.iterdir()):
        return []
    if not (folder / "store.json").is_file():
        raise StoreError(f"{folder}: has no store.json; not a bmojo store, not deleting anything")
    try:
        meta = read_json(folder / "store.json", StoreError, "bmojo store")
    except StoreError:
        meta = {"format": FORMAT}  # cut short or garbled: the store's own files can still be told by name
    if meta.get("format") != FORMAT:
        raise StoreError(f"{folder}/store.json: format={meta.get('format')!r}; not a bmojo store, not deleting it")
    ours, other = store_files(folder)
    for p in ours:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    if not other:
        folder.rmdir()
    return other


def disk_bytes(folder: Path) -> int:
    """Bytes of the store's own files (not what recovery moved under dropped/, nor a user's files)."""
    return sum(p.stat().st_size for p in store_files(folder)[0] if p.is_file())


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
