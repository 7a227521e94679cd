"""The store detects what a crash or the disk did to it: every committed record is verified on reopen against its
commit's CRC (and its own CRC, which names it); a corrupt record is reported and dropped, never served, while the
intact records after it are kept; whatever recovery drops is first copied under dropped/; a commit record with a
valid magic and a bad CRC commits nothing; a layer cut at any byte of its last record reopens at the records
before it; `verify` reports all of it without changing a byte."""
import struct
import zlib

import numpy as np
import pytest
import torch

from bmojo.memory import Store
from pathlib import Path

from bmojo.memory.disk import COMMIT, MAGIC, make_spec, record_dtype, verify

SPEC = make_spec("x", {0: (2, 4), 2: (1, 4)}, rows=1)
CHUNKS = (3, 1, 4)  # entries per write: three commits per layer


def _write(folder):
    """A store of three committed writes per layer; -> {layer: the records' (pos, k, v) as written}."""
    want = {}
    with Store.open(folder, SPEC) as s:
        for layer, hk in ((0, 2), (2, 1)):
            g, start, rows = torch.Generator().manual_seed(layer), 0, []
            for n in CHUNKS:
                pos, k, v = torch.arange(start, start + n) * 3, torch.randn(n, hk, 4, generator=g), \
                    torch.randn(n, hk, 4, generator=g)
                s.layer(layer).add(0, pos, k, v)
                s.flush()
                rows += list(zip(pos.tolist(), k, v))
                start += n
            want[layer] = rows
    return want


def _reopened(folder, want, layer_kept):
    """Reopen; each layer holds exactly the records layer_kept[layer] (their indices as written, or n: the first n),
    in order, values read back equal."""
    with Store.open(folder, SPEC) as s:
        for layer, kept in layer_kept.items():
            kept = list(range(kept)) if isinstance(kept, int) else kept
            n, rows = len(kept), [want[layer][i] for i in kept]
            ls = s.layer(layer)
            assert len(ls) == n, (layer, len(ls), n)
            recs = np.fromfile(ls.path, dtype=ls.rec)
            assert len(recs) == n
            for i, (pos, k, v) in enumerate(rows):
                assert recs["pos"][i] == pos and np.array_equal(recs["k"][i], k.numpy())
            if n:
                ids = torch.arange(n)[:, None, None].expand(n, ls.kv_heads, 1)  # query head h reads kv head h
                vals = ls.values(ids.contiguous())[:, :, 0]
                assert torch.equal(vals, torch.stack([v for _, _, v in rows]))
        return s.recovered


def _but(n, *dropped):
    return [i for i in range(n) if i not in dropped]


@pytest.mark.parametrize("field", ["row", "crc", "pos", "k", "v"])
@pytest.mark.parametrize("record", [0, 4, 7])  # in the first, the second and the last commit
def test_a_flipped_byte_inside_a_committed_record_is_reported_and_dropped(tmp_path, field, record):
    n = sum(CHUNKS)
    want = _write(tmp_path / "s")
    rec = record_dtype(2, 4, "float32")
    path = tmp_path / "s" / "layer0.bin"
    data = bytearray(path.read_bytes())
    off = record * rec.itemsize + rec.fields[field][1] + 1
    data[off] ^= 0x10
    path.write_bytes(bytes(data))
    damaged = bytes(data[record * rec.itemsize:(record + 1) * rec.itemsize])
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    (v,) = verify(tmp_path / "s")  # reported without a change
    assert v["records"] == [record] and {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before
    recovered = _reopened(tmp_path / "s", want, {0: _but(n, record), 2: n})  # every intact record kept
    (r,) = recovered
    assert r["file"] == "layer0.bin" and r["dropped_entries"] == 1
    assert f"record(s) {record} " in r["reason"] and "CRC" in r["reason"]
    assert (Path(r["kept_in"]) / "layer0.bin.corrupt").read_bytes() == damaged  # moved aside, not deleted
    assert _reopened(tmp_path / "s", want, {0: _but(n, record), 2: n}) == []  # the drop was committed
    assert verify(tmp_path / "s") == []
    with Store.open(tmp_path / "s", SPEC) as s:  # and the layer stays writable
        s.layer(0).add(0, torch.tensor([99]), torch.zeros(1, 2, 4), torch.ones(1, 2, 4))
    with Store.open(tmp_path / "s", SPEC) as s:
        assert len(s.layer(0)) == n and s.recovered == []


def test_a_record_copied_over_another_inside_a_commit_drops_that_commit(tmp_path):
    """Each record passes its own CRC, the commit's CRC of its data does not: the commit is distrusted (a store
    that trusted the records would serve a duplicate entry)."""
    n = sum(CHUNKS)
    want = _write(tmp_path / "s")
    size = record_dtype(2, 4, "float32").itemsize
    path = tmp_path / "s" / "layer0.bin"
    data = bytearray(path.read_bytes())
    data[5 * size:6 * size] = data[4 * size:5 * size]  # record 4 over record 5, both in the last commit (4..7)
    path.write_bytes(bytes(data))
    recovered = _reopened(tmp_path / "s", want, {0: 4, 2: n})
    (r,) = recovered
    assert r["records"] == [4, 5, 6, 7] and "commit" in r["reason"]


def test_a_full_size_commit_record_with_a_bad_crc_commits_nothing(tmp_path):
    want = _write(tmp_path / "s")
    n = sum(CHUNKS)
    extra = Store.open(tmp_path / "s", SPEC)  # one more write to layer 2, whose commit is then spoiled
    extra.layer(2).add(0, torch.tensor([500]), torch.zeros(1, 1, 4), torch.zeros(1, 1, 4))
    extra.close()
    log = tmp_path / "s" / "commits.log"
    raw = bytearray(log.read_bytes())
    magic, layer, count, data_crc, crc = COMMIT.unpack_from(raw, len(raw) - COMMIT.size)
    assert (magic, layer, count) == (MAGIC, 2, n + 1)
    struct.pack_into("<I", raw, len(raw) - 4, crc ^ 1)  # valid magic, layer and count; the record's CRC is wrong
    log.write_bytes(bytes(raw))
    recovered = _reopened(tmp_path / "s", want, {0: n, 2: n})
    assert {r["file"] for r in recovered} == {"commits.log", "layer2.bin"}  # the record, then the data it committed
    assert next(r for r in recovered if r["file"] == "commits.log")["dropped_bytes"] == COMMIT.size


def test_a_layer_cut_at_any_byte_of_its_last_record_reopens_before_it(tmp_path):
    rec = record_dtype(1, 4, "float32")
    n = sum(CHUNKS)
    for cut in range(rec.itemsize):  # every byte boundary of the last record, from its first byte on
        folder = tmp_path / f"s{cut}"
        want = _write(folder)
        path = folder / "layer2.bin"
        path.write_bytes(path.read_bytes()[:(n - 1) * rec.itemsize + cut])
        recovered = _reopened(folder, want, {0: n, 2: n - 1})
        (r,) = recovered
        assert r["file"] == "layer2.bin" and r["dropped_entries"] == 1 and "record 7 " in r["reason"]


def test_a_cut_made_by_truncate_verifies_on_reopen(tmp_path):
    want = _write(tmp_path / "s")
    with Store.open(tmp_path / "s", SPEC) as s:
        s.truncate({0: 5, 2: 2}, "a test")
        s.layer(2).add(0, torch.tensor([700]), torch.zeros(1, 1, 4), torch.zeros(1, 1, 4))
    assert _reopened(tmp_path / "s", want, {0: 5}) == []
    with Store.open(tmp_path / "s", SPEC) as s:
        assert len(s.layer(2)) == 3 and s.recovered == []
    path = tmp_path / "s" / "layer0.bin"  # a record kept by the cut, corrupted later: the cut's CRC sees it
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    (r,) = _reopened(tmp_path / "s", want, {0: 4})
    assert "record(s) 4 " in r["reason"]


def test_crc_of_a_record_is_over_the_record_with_its_crc_field_zero():
    from bmojo.memory.disk import record_crc, seal

    recs = np.zeros(3, dtype=record_dtype(1, 2, "float32"))
    recs["pos"] = [5, 6, 7]
    seal(recs)
    for r in recs:
        raw = bytearray(r.tobytes())
        assert record_crc(bytes(raw)) == r["crc"] != 0
        raw[4:8] = b"\0\0\0\0"
        assert zlib.crc32(bytes(raw)) == r["crc"]
