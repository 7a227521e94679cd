"""Streaming prepare: sharded token files, corpora of the previous format, an interrupted prepare, JSONL and
Parquet inputs, parallel tokenizing and a user's tokenizer.json."""
import gzip
import hashlib
import json

import numpy as np
import pytest

from bmojo.config import ConfigError
from bmojo.data.text import corpus as corpus_mod
from bmojo.data.text.corpus import ShardedTokens, TokenCorpus, prepare
from bmojo.data.text.tokenizer import FileTokenizer
from bmojo.train.lm import packed_batches
from tests.helpers import hf_tokenizer_folder

QUIET = dict(log=lambda *_: None)


def _texts(n=30, seed=0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "naïve", "café", "λx", "end.\n"]
    return {f"d{i:03d}.txt": " ".join(rng.choice(words, 40 + 7 * i)) for i in range(n)}


def _folder(path, texts):
    path.mkdir()
    for name, t in texts.items():
        (path / name).write_text(t, encoding="utf-8")
    return path


def _all_docs(c):
    return {d["name"]: c.tokenizer.decode(c.document(split, i))
            for split in ("train", "val", "test") for i, d in enumerate(c.documents(split))}


def test_shards_read_as_one_split(tmp_path):
    texts = _texts()
    src = _folder(tmp_path / "c", texts)
    one = TokenCorpus(prepare(str(src), root=tmp_path / "one", **QUIET))
    many = TokenCorpus(prepare(str(src), root=tmp_path / "many", shard_tokens=1024, **QUIET))
    assert len(many.manifest["splits"]["train"]["shards"]) > 3
    assert _all_docs(many) == _all_docs(one) == {n: t for n, t in texts.items()}
    a, b = np.asarray(one.tokens("train")), many.tokens("train")
    assert isinstance(b, ShardedTokens) and len(b) == len(a)
    assert np.array_equal(np.asarray(b), a)
    edge = int(b.starts[1])
    for lo, hi in ((0, 10), (edge - 5, edge + 5), (edge - 1, edge), (3, len(a)), (edge, edge + 2000)):
        assert np.array_equal(b[lo:hi], a[lo:hi]), (lo, hi)
    assert b[edge] == a[edge] and b[-1] == a[-1]
    x1, y1 = packed_batches(one.tokens("train"), 4, 64, seed=0)(3)
    x2, y2 = packed_batches(b, 4, 64, seed=0)(3)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    many.verify()
    shard = many.folder / many.manifest["splits"]["train"]["shards"][2]["file"]
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=f"{shard.name}: SHA-256"):
        many.verify()


def test_a_corpus_of_the_first_format_still_loads(tmp_path):
    """Version 1: one `SPLIT.bin` per split and every document listed in the manifest."""
    folder = tmp_path / "v1"
    folder.mkdir()
    docs = {"train": [b"first doc", b"second"], "val": [b"val doc"], "test": [b"test doc"]}
    manifest = {"format": "bmojo-corpus", "version": 1, "corpus": "v1", "source": {}, "tokenizer": {"kind": "byte"},
                "dtype": "uint8", "splits": {}, "documents": []}
    for split, items in docs.items():
        stream, offset = b"", 0
        for i, d in enumerate(items):
            stream += b"\x00" + d
            manifest["documents"].append({"name": f"{split}{i}", "split": split, "offset": offset + 1,
                                          "tokens": len(d)})
            offset += len(d) + 1
        (folder / f"{split}.bin").write_bytes(stream)
        manifest["splits"][split] = {"file": f"{split}.bin", "documents": len(items), "tokens": len(stream),
                                     "sha256": hashlib.sha256(stream).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    c = TokenCorpus(folder)
    c.verify()
    assert c.tokenizer.decode(c.document("train", 1)) == "second"
    assert [c.tokenizer.decode(d) for d in c.split_documents("train")] == ["first doc", "second"]
    assert c.documents("val")[0]["name"] == "val0" and len(c.tokens("test")) == 9


def test_an_interrupted_prepare_leaves_nothing_complete_and_the_next_starts_clean(tmp_path, monkeypatch):
    src = _folder(tmp_path / "c", _texts())
    real_add, calls = corpus_mod._SplitWriter.add, []

    def crash(self, sep, ids):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real_add(self, sep, ids)

    monkeypatch.setattr(corpus_mod._SplitWriter, "add", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(src), root=tmp_path / "data", **QUIET)
    left = list((tmp_path / "data").rglob("manifest.json"))
    assert left == [] and any(p.name.endswith(".tmp") for p in (tmp_path / "data").rglob("*"))
    monkeypatch.setattr(corpus_mod._SplitWriter, "add", real_add)
    folder = prepare(str(src), root=tmp_path / "data", **QUIET)
    TokenCorpus(folder).verify()
    assert not any(p.name.endswith(".tmp") for p in folder.parent.iterdir())


def test_jsonl_gzip_and_parquet_records(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    src = tmp_path / "c"
    src.mkdir()
    texts = list(_texts(9).values())
    lines = [json.dumps({"body": t, "id": i}) for i, t in enumerate(texts[:3])]
    (src / "a.jsonl").write_text("\n".join(lines[:2] + ["{broken", json.dumps({"id": 7}), lines[2]]) + "\n")
    with gzip.open(src / "b.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps({"body": t}) for t in texts[3:6]) + "\n")
    pq.write_table(pa.table({"body": texts[6:] + [None]}), src / "c.parquet")
    c = TokenCorpus(prepare(str(src), text_field="body", root=tmp_path / "data", **QUIET))
    got = _all_docs(c)
    assert sorted(got.values()) == sorted(texts)
    assert {"a.jsonl:1", "a.jsonl:5", "b.jsonl.gz:3", "c.parquet:1"} <= set(got)
    skipped = c.manifest["skipped"]
    assert skipped["counts"]["malformed"] == 3 and set(skipped["malformed"]) == {"a.jsonl:3", "a.jsonl:4",
                                                                                  "c.parquet:4"}
    with pytest.raises(ConfigError, match=r"a.jsonl:3: line 3 is not JSON"):
        prepare(str(src), text_field="body", root=tmp_path / "data2", strict=True, **QUIET)
    with pytest.raises(ConfigError, match="c.parquet: no column 'text'"):
        prepare(str(src), root=tmp_path / "data3", **QUIET)


def test_parallel_tokenizing_gives_the_same_corpus(tmp_path):
    src = _folder(tmp_path / "c", _texts(12))
    a = prepare(str(src), tokenizer="bpe", vocab_size=300, workers=1, root=tmp_path / "A", **QUIET)
    b = prepare(str(src), tokenizer="bpe", vocab_size=300, workers=2, root=tmp_path / "B", **QUIET)
    assert TokenCorpus(a).digest == TokenCorpus(b).digest
    assert (a / "train-00000.bin").read_bytes() == (b / "train-00000.bin").read_bytes()


def test_a_users_tokenizer_json_separates_documents_by_its_own_tokens(tmp_path):
    pytest.importorskip("tokenizers")
    tok = hf_tokenizer_folder(tmp_path / "tok", _texts(20, seed=1).values())
    texts = _texts()
    src = _folder(tmp_path / "c", texts)
    c = TokenCorpus(prepare(str(src), tokenizer=str(tmp_path / "tok"), root=tmp_path / "data", **QUIET))
    assert c.tokenizer.sep_id == tok.token_to_id("<s>") and c.tokenizer.vocab_size == tok.get_vocab_size()
    assert _all_docs(c) == texts
    assert c.tokens("train")[0] == tok.token_to_id("<s>")
    assert json.loads((c.folder / "tokenizer.json").read_text()) == json.loads(tok.to_str())
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>",
                                                                        "add_bos_token": False}))
    eos = FileTokenizer.from_path(tmp_path / "tok" / "tokenizer.json")
    assert eos.sep_id == tok.token_to_id("</s>")
    other = TokenCorpus(prepare(str(src), tokenizer=str(tmp_path / "tok"), root=tmp_path / "data", **QUIET))
    assert other.folder != c.folder  # the same tokenizer file but another separator: another corpus folder
    with pytest.raises(ConfigError, match="expected 'byte', 'bpe', a tokenizer.json"):
        FileTokenizer.from_path(tmp_path / "nothing")
