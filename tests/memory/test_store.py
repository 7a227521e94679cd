"""The long-term store (bmojo.memory): exactness of reads, modes that agree, asynchronous writes that lose
nothing, crash recovery, reuse across calls, and clear errors."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from bmojo import BMojoLM
from bmojo.inference import generate
from bmojo.layers.attention import Attention
from bmojo.layers.bmojo import BMojoMixer
from bmojo.memory import Store, StoreConfig, StoreError, ann_available, clear, describe
from bmojo.memory.index import LayerIndex
from bmojo.memory.session import load_session, save_session
from bmojo.memory.disk import make_spec
from tests.helpers import assert_close, randomise_extras, seeded, tiny


def _model(**kw):
    torch.manual_seed(0)
    return randomise_extras(BMojoLM(tiny("bmojo", **kw))).eval()


def _ids(B, T, seed=0, V=61):
    return torch.randint(0, V, (B, T), generator=seeded(seed))


def _mixer_store(tmp_path, mixer, rows=2, **cfg):
    spec = make_spec("test", {0: (mixer.n_kv_heads, mixer.head_dim)}, rows)
    return Store.open(tmp_path / "store", spec, StoreConfig(**cfg))


@pytest.mark.parametrize("T", [7, 40, 61])
def test_store_with_room_for_everything_is_full_attention(tmp_path, T):
    """Fading off, a small memory, and a store read with top-k >= T: every past token is in the window, the
    memory or the store, so the layer equals full causal attention (the store's memory-read exactness)."""
    cfg = tiny("bmojo-paper", fading=False, memory_size=3)  # no SSM residual: attention alone
    torch.manual_seed(0)
    b = randomise_extras(BMojoMixer(cfg, 0)).eval()
    full = Attention(cfg, window=None)
    full.load_state_dict({k: v for k, v in b.state_dict().items() if k in full.state_dict()})
    x = torch.randn(2, T, 32, generator=seeded(1))
    with _mixer_store(tmp_path, b, topk=T, search="exact") as store:
        st = b.init_state(2)
        st.store = store.layer(0)
        y, _ = b(x, st)
    assert_close(y, full(x)[0], name="bmojo + store (k >= T) vs full attention")
    if T > 2 * cfg.window:
        y_no, _ = b(x)
        assert (y_no - y).abs().max() > 1e-3, "the store changed nothing: the test would not see a broken read"


@pytest.mark.parametrize("admit,B,kw", [("evicted", 2, {}), ("memory", 2, {}), ("evicted", 1, {}),  # B = 1: fast path
                                        ("evicted", 2, {"null_key": True}), ("evicted", 1, {"null_key": True}),
                                        ("evicted", 2, {"memory_rope": "edge"}), ("evicted", 1, {"memory_rope": "edge"})])
def test_parallel_equals_prefill_then_decode_with_store(tmp_path, admit, B, kw):
    """With the null key too: the store's entries and the null key share the per-query segment."""
    m = _model(**kw)
    ids = _ids(B, 61)
    with Store.for_model(tmp_path / "a", m, rows=B, cfg=StoreConfig(topk=5, admit=admit)) as sa, \
            Store.for_model(tmp_path / "b", m, rows=B, cfg=StoreConfig(topk=5, admit=admit)) as sb:
        full = m(ids, m.init_state(B, store=sa), return_state=True).logits
        out = m(ids[:, :13], m.init_state(B, store=sb), return_state=True)
        logits, st = [out.logits], out.state
        for t in range(13, 61):
            lg, st = m.step(ids[:, t], st)
            logits.append(lg[:, None])
        assert_close(torch.cat(logits, 1), full, rtol=1e-4, name="prefill+decode vs parallel, with store")
        assert sa.info()["entries"] == sb.info()["entries"] and sum(sa.info()["entries"].values()) > 0
        assert (full - m(ids).logits).abs().max() > 1e-4, "the store changed nothing"


def test_admit_memory_stores_exactly_what_left_the_memory(tmp_path):
    """StoreConfig.admit="memory": a layer stores the entries pushed out of its eidetic memory (chosen once by the
    innovation test), not the chunk candidates that never got in; "evicted" stores every token that left."""
    m = _model()
    ids = _ids(2, 90, seed=3)
    stored = {}
    for admit in ("evicted", "memory"):
        with Store.for_model(tmp_path / admit, m, rows=2, cfg=StoreConfig(admit=admit)) as s:
            st = m.init_state(2, store=s)
            ever = [[set(), set()] for _ in m.layers]  # positions ever in each layer's memory, per row
            for t in range(ids.shape[1]):
                _, st = m.step(ids[:, t], st)
                for li, ls in enumerate(st.layers):
                    for r in range(2):
                        ever[li][r] |= {int(p) for p in ls.mem.pos[r] if p >= 0}
            stored[admit] = {li: [{int(p) for p in s.layer(li).index[r].pos[:s.layer(li).index[r].n]}
                                  for r in range(2)] for li in s.layers}
            for li in s.layers:
                for r in range(2):
                    now = {int(p) for p in st.layers[li].mem.pos[r] if p >= 0}
                    if admit == "memory":
                        assert stored[admit][li][r] == ever[li][r] - now
                    else:  # every token that left the window's chunk loop: all but the memory and the open chunk
                        done = ids.shape[1] - ids.shape[1] % m.cfg.chunk
                        assert stored[admit][li][r] == set(range(done)) - now
    assert all(0 < len(a) < len(b) for li in stored["memory"] for a, b in zip(stored["memory"][li], stored["evicted"][li]))


@pytest.mark.parametrize("kw", [dict(), dict(n_kv_heads=1, selection_gate=True), dict(memory_size=2, chunk=2),
                                dict(memory_rope="edge")])
def test_training_store_equals_a_fresh_exact_store(tmp_path, kw):
    """`train_store_topk`: a training forward builds its store from its own evictions.  It must equal the eval
    forward and the prefill + decode path reading a real, fresh, exact store; and gradients reach the keys and
    values that were retrieved."""
    m = _model(train_store_topk=5, **kw)
    ids = _ids(2, 61)
    m.train()
    own = m(ids).logits
    m.eval()
    with Store.for_model(tmp_path / "a", m, rows=2, cfg=StoreConfig(topk=5, search="exact")) as sa, \
            Store.for_model(tmp_path / "b", m, rows=2, cfg=StoreConfig(topk=5, search="exact")) as sb:
        real = m(ids, m.init_state(2, store=sa), return_state=True).logits
        st = m.init_state(2, store=sb)
        steps = []
        for t in range(61):
            lg, st = m.step(ids[:, t], st)
            steps.append(lg[:, None])
    assert_close(own, real, rtol=1e-5, name="training store vs a fresh exact store (parallel)")
    assert_close(own, torch.cat(steps, 1), rtol=1e-4, name="training store vs decode with a store")
    assert (own - m(ids).logits).abs().max() > 1e-4, "the training store changed nothing"
    m.train()
    m(ids).logits[:, -1].sum().backward()
    k_proj = [mod.k_proj.weight.grad for mod in m.modules() if isinstance(mod, BMojoMixer)]
    assert all(g is not None and g.abs().sum() > 0 for g in k_proj)


def test_training_store_is_only_for_training_forwards_from_the_start():
    """Eval forwards and forwards that continue a state read no store unless one is attached."""
    m = _model(train_store_topk=5)
    plain = _model()
    ids = _ids(1, 50)
    assert torch.equal(m(ids).logits, plain(ids).logits)
    m.train(); plain.train()
    out = m(ids[:, :20], m.init_state(1), return_state=True)
    assert torch.equal(m(ids[:, 20:], out.state).logits,
                       plain(ids[:, 20:], plain(ids[:, :20], plain.init_state(1), return_state=True).state).logits)


def test_causal_with_store(tmp_path):
    m = _model()
    ids = _ids(1, 50)
    ids2 = ids.clone()
    ids2[0, 30] = (ids2[0, 30] + 1) % 61
    with Store.for_model(tmp_path / "a", m) as sa, Store.for_model(tmp_path / "b", m) as sb:
        a = m(ids, m.init_state(1, store=sa), return_state=True).logits
        b = m(ids2, m.init_state(1, store=sb), return_state=True).logits
    assert torch.equal(a[:, :30], b[:, :30])
    assert (a[:, 30:] - b[:, 30:]).abs().max() > 0


def test_a_chunk_sees_every_entry_evicted_before_it_while_writes_lag(tmp_path, monkeypatch):
    """The disk writer is made slow: decoding must not wait for it, and every query must still read every entry
    evicted before its chunk (results equal a run whose writes are instant)."""
    m = _model()
    ids = _ids(1, 60, seed=3)
    with Store.for_model(tmp_path / "fast", m) as fast:
        ref = m(ids, m.init_state(1, store=fast), return_state=True).logits
    real_write = Store._write

    def slow_write(self, *job):
        time.sleep(0.05)
        real_write(self, *job)

    monkeypatch.setattr(Store, "_write", slow_write)
    with Store.for_model(tmp_path / "slow", m) as slow:
        out = m(ids[:, :1], m.init_state(1, store=slow), return_state=True)
        logits, st = [out.logits], out.state
        lagged = 0
        for t in range(1, 60):
            lg, st = m.step(ids[:, t], st)
            logits.append(lg[:, None])
            ls = slow.layer(0)
            lagged = max(lagged, len(ls) - ls.written)
        assert lagged > 0, "the writer never lagged: the test did not exercise reads of unwritten entries"
        assert_close(torch.cat(logits, 1), ref, rtol=1e-4, name="decode with lagging writes vs instant writes")
        slow.flush()
        assert all(ls.written == len(ls) for ls in slow.layers.values())


def test_reopen_restores_the_index_and_values(tmp_path):
    torch.manual_seed(0)
    spec = make_spec("x", {0: (2, 8)}, rows=2)
    k, v = torch.randn(30, 2, 8), torch.randn(30, 2, 8)
    pos = torch.arange(30) * 3
    with Store.open(tmp_path / "s", spec) as s:
        s.layer(0).add(0, pos[:20], k[:20], v[:20])
        s.layer(0).add(1, pos[20:], k[20:], v[20:])
        q = torch.randn(4, 4, 8)
        before = s.layer(0).index[0].search(q, torch.full((4,), 200), 8, 5)
    with Store.open(tmp_path / "s", spec) as s:
        assert s.recovered == [] and len(s.layer(0)) == 30
        after = s.layer(0).index[0].search(q, torch.full((4,), 200), 8, 5)
        for x, y in zip(before, after):
            assert torch.equal(x, y)
        ids = torch.tensor([[[3, 25], [25, -1]]])  # (n=1, H=2 query heads reading kv heads 0 and 1, K=2)
        want = torch.stack([torch.stack([v[3, 0], v[25, 0]]), torch.stack([v[25, 1], v[0, 1]])])[None]
        assert torch.equal(s.layer(0).values(ids), want)  # -1 (no entry) reads entry 0: attention masks it


def test_index_visibility_and_topk_against_brute_force():
    torch.manual_seed(0)
    ix = LayerIndex(2, 8, StoreConfig(search="exact"))
    k, pos = torch.randn(50, 2, 8), torch.randperm(50)
    ix.add(k, pos, torch.arange(50))
    q = torch.randn(3, 4, 8)
    qpos = torch.tensor([20, 35, 60])
    ids, keys, logits = ix.search(q, qpos, 8, 4)
    for n in range(3):
        for h in range(4):
            s = k[:, h // 2] @ q[n, h]
            s[pos > qpos[n] - 8] = float("-inf")
            want = s.topk(4).indices
            assert set(ids[n, h].tolist()) == set(want.tolist())
            assert torch.equal(keys[n, h], k[ids[n, h], h // 2])
            assert torch.allclose(logits[n, h], s[ids[n, h]])


@pytest.mark.skipif(not ann_available(), reason="faiss (the `ann` extra) is not installed")
def test_ann_index_recall_against_exact():
    torch.manual_seed(0)
    cfg_e, cfg_a = StoreConfig(search="exact"), StoreConfig(search="auto", ann_threshold=1000)
    ex, an = LayerIndex(1, 16, cfg_e), LayerIndex(1, 16, cfg_a)
    N = 4000
    k = torch.randn(N, 1, 16)
    for a in range(0, N, 500):
        ex.add(k[a:a + 500], torch.arange(a, a + 500), torch.arange(a, a + 500))
        an.add(k[a:a + 500], torch.arange(a, a + 500), torch.arange(a, a + 500))
    assert an.ann is not None and ex.ann is None
    q = torch.randn(64, 2, 16)
    qpos = torch.full((64,), N + 100)
    e, a = ex.search(q, qpos, 8, 10)[0], an.search(q, qpos, 8, 10)[0]
    recall = np.mean([len(set(e[n, h].tolist()) & set(a[n, h].tolist())) / 10 for n in range(64) for h in range(2)])
    assert recall >= 0.9, recall
    # entries too recent for a query are never returned, by either index
    qpos = torch.full((64,), N // 2)
    a = an.search(q, qpos, 8, 10)[0]
    assert (a[a >= 0] <= N // 2 - 8).all()


_WRITER = textwrap.dedent("""
    import sys, torch
    from bmojo.memory import Store, StoreConfig
    from bmojo.memory.disk import make_spec
    spec = make_spec("x", {0: (2, 8), 3: (2, 8)}, rows=1)
    s = Store.open(sys.argv[1], spec, StoreConfig(durable=True))
    for c in range(100000):
        for layer in (0, 3):
            g = torch.Generator().manual_seed(c * 7 + layer)
            n = 1 + c % 5
            s.layer(layer).add(0, torch.arange(n) + 10 * c, torch.randn(n, 2, 8, generator=g),
                               torch.randn(n, 2, 8, generator=g))
        if c % 10 == 9:
            s.flush()
            print(c, flush=True)
""")


def test_killed_mid_write_reopens_consistent(tmp_path):
    """SIGKILL a writing process; reopening drops at most the write in flight, reports it, and every entry left
    is exactly what was written."""
    folder = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    p = subprocess.Popen([sys.executable, "-c", _WRITER, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    flushed = -1
    for line in p.stdout:
        flushed = int(line)
        if flushed >= 29:
            break
    time.sleep(np.random.default_rng().uniform(0.0, 0.2))  # a random moment, most likely mid-write
    p.send_signal(signal.SIGKILL)
    p.wait()
    # make the in-flight write torn for sure: half a record and half a commit record past the end
    with open(folder / "layer0.bin", "ab") as f:
        f.write(b"\x01" * 50)
    with open(folder / "commits.log", "ab") as f:
        f.write(b"\x02" * 10)
    spec = make_spec("x", {0: (2, 8), 3: (2, 8)}, rows=1)
    with Store.open(folder, spec) as s:
        dropped = {r["file"] for r in s.recovered}
        assert {"layer0.bin", "commits.log"} <= dropped
        for layer in (0, 3):
            ls = s.layer(layer)
            assert len(ls) >= sum(1 + c % 5 for c in range(flushed + 1)), "lost entries that were flushed"
            recs = np.fromfile(ls.path, dtype=ls.rec)
            assert len(recs) == len(ls)
            c = start = 0
            while start < len(recs):  # every committed chunk is complete and intact
                g = torch.Generator().manual_seed(c * 7 + layer)
                n = 1 + c % 5
                assert start + n <= len(recs), "a chunk was committed half-written"
                k, v = torch.randn(n, 2, 8, generator=g), torch.randn(n, 2, 8, generator=g)
                assert np.array_equal(recs["k"][start:start + n], k.numpy())
                assert np.array_equal(recs["v"][start:start + n], v.numpy())
                assert np.array_equal(recs["pos"][start:start + n], np.arange(n) + 10 * c)
                start, c = start + n, c + 1
        n0 = len(s.layer(0))
        s.layer(0).add(0, torch.tensor([1]), torch.zeros(1, 2, 8), torch.ones(1, 2, 8))  # it stays writable
    with Store.open(folder, spec) as s:
        assert len(s.layer(0)) == n0 + 1 and s.recovered == []


def test_reopening_with_other_shapes_is_a_clear_error(tmp_path):
    with Store.open(tmp_path / "s", make_spec("x", {0: (2, 8)})):
        pass
    with pytest.raises(StoreError, match="layers=.*another model"):
        Store.open(tmp_path / "s", make_spec("x", {0: (2, 16)}))
    with pytest.raises(StoreError, match="rows="):
        Store.open(tmp_path / "s", make_spec("x", {0: (2, 8)}, rows=3))
    with pytest.raises(StoreError, match="fingerprint="):
        Store.open(tmp_path / "s", make_spec("y", {0: (2, 8)}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a bmojo store"):
        Store.open(tmp_path / "other", make_spec("x", {0: (2, 8)}))
    with pytest.raises(StoreError, match="not a bmojo store"):
        clear(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    (tmp_path / "s" / "store.json").write_text("{not json")
    with pytest.raises(StoreError, match="store.json: not valid JSON"):
        Store.open(tmp_path / "s", make_spec("x", {0: (2, 8)}))


@pytest.mark.parametrize("field,value", [("topk", 0), ("search", "fast"), ("ann_threshold", -1), ("admit", "all")])
def test_bad_store_config_names_the_field(field, value):
    with pytest.raises(StoreError, match=f"StoreConfig.{field}="):
        StoreConfig(**{field: value})


def test_model_without_memory_layers_refuses_a_store(tmp_path):
    m = BMojoLM(tiny("transformer"))
    with pytest.raises(StoreError, match="no B'MOJO layer"):
        Store.for_model(tmp_path / "s", m)


def test_session_continues_the_stream_exactly(tmp_path):
    """Two generate calls through a saved session equal one call over the concatenated text."""
    m = _model()
    a, b = _ids(1, 30, seed=1), _ids(1, 17, seed=2)
    with Store.for_model(tmp_path / "s", m) as s:
        out1, st = generate(m, a, 12, state=load_session(s, m), return_state=True)
        save_session(s, st)
    with Store.for_model(tmp_path / "s", m) as s:
        st = load_session(s, m)
        assert st.pos == 42
        out2 = generate(m, b, 9, state=st)
    with Store.for_model(tmp_path / "one", m) as s:
        ref = generate(m, b, 9, state=_continue(m, out1, s))
    assert torch.equal(out2, ref)
    assert describe(tmp_path / "s")["has_session"]


def _continue(m, prefix, store):
    return m(prefix, m.init_state(1, store=store), return_state=True).state


def test_session_drops_entries_of_a_run_that_died_before_saving(tmp_path):
    m = _model()
    with Store.for_model(tmp_path / "s", m) as s:
        _, st = generate(m, _ids(1, 30), 2, state=load_session(s, m), return_state=True)
        save_session(s, st)
        saved = dict(s.info()["entries"])
    with Store.for_model(tmp_path / "s", m) as s:  # a later run adds entries, then dies without saving
        generate(m, _ids(1, 40, seed=5), 2, state=load_session(s, m))
        s.flush()
        assert s.info()["entries"] != saved
    with Store.for_model(tmp_path / "s", m) as s:
        st = load_session(s, m)
        assert s.info()["entries"] == saved and st.pos == 32
        assert any("session" in r.get("reason", "") for r in s.recovered)


def test_cli_generate_with_storage_reuses_and_clears(tmp_path):
    from bmojo.cli.main import main
    from bmojo.data.text.tokenizer import ByteTokenizer
    from bmojo.train.checkpoint import save_checkpoint

    m = BMojoLM(tiny("bmojo", vocab_size=256))
    ck = tmp_path / "ck"
    save_checkpoint(ck, m, {"model": m.cfg.to_dict(), "tokenizer": ByteTokenizer().to_dict()},
                    files={})
    store = tmp_path / "mem"
    args = ["generate", "--checkpoint", str(ck), "--max-new-tokens", "20", "--temperature", "0",
            "--storage", str(store)]
    assert main([*args, "--prompt", "hello there, this is a long enough prompt"]) == 0
    first = describe(store)
    assert first["has_session"] and sum(first["entries"].values()) > 0
    assert main([*args, "--prompt", "again"]) == 0
    assert sum(describe(store)["entries"].values()) > sum(first["entries"].values())
    assert main(["memory", "info", str(store), "--json"]) == 0
    assert main(["memory", "clear", str(store)]) == 0
    assert not store.exists()
    prompt = ["--prompt", "hello there, this is a long enough prompt"]
    assert main([*args, *prompt, "--store-admit", "memory"]) == 0  # fewer entries: only those that left the memory
    assert 0 < sum(describe(store)["entries"].values()) < sum(first["entries"].values())
    assert main(["memory", "clear", str(store)]) == 0
    other = tmp_path / "ck2"
    m2 = BMojoLM(tiny("bmojo", vocab_size=256, d_model=48))
    save_checkpoint(other, m2, {"model": m2.cfg.to_dict(), "tokenizer": ByteTokenizer().to_dict()},
                    files={})
    assert main([*args, "--prompt", "hi"]) == 0
    assert main(["generate", "--checkpoint", str(other), "--prompt", "hi", "--storage", str(store)]) == 2


def test_info_json_is_json(tmp_path, capsys):
    from bmojo.cli.main import main

    with Store.open(tmp_path / "s", make_spec("x", {0: (2, 8)})) as s:
        s.layer(0).add(0, torch.tensor([4, 5]), torch.zeros(2, 2, 8), torch.zeros(2, 2, 8))
    assert main(["memory", "info", str(tmp_path / "s"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["entries"] == {"0": 2}


def test_retrieved_entries_join_the_one_softmax():
    """The blocked attention with per-query store entries equals the sequential reference, and its shares
    (store included) sum to 1."""
    from bmojo.ops.attention import window_attention_ref, window_attention_shares
    from tests.ops.test_attention import _inputs, _opts, _segs

    T, W, C, q0, M, K = 37, 8, 4, 5, 6, 3
    t, kw = _inputs(T, W, C, q0, M, seeded(4))
    B, _, H, Dh = t["q"].shape
    g = seeded(5)
    extra = (torch.randn(B, T, H, K, Dh, generator=g), torch.randn(B, T, H, K, Dh, generator=g),
             torch.rand(B, T, H, K, generator=g) > 0.3)
    segs = _segs(t, kw, store=extra)
    o, shares = window_attention_shares(t["q"], segs, W, **_opts(kw))
    assert_close(o, window_attention_ref(t["q"], segs, W, **_opts(kw)), name="store-extended attention vs reference")
    total = sum(shares.values())
    assert_close(total, torch.ones_like(total), name="shares sum to 1")
    assert shares["store"].max() > 0.05


def test_eval_ppl_with_a_store_per_window(tmp_path):
    """length_eval gives each window a fresh store; streaming in segments reads it exactly as one pass does."""
    from bmojo.eval.ppl import length_eval

    m = _model()
    regions = [np.asarray(_ids(1, 129, seed=s)[0]) for s in range(3)]
    opened = []

    def open_store(rows):
        opened.append(rows)
        return Store.for_model(tmp_path / f"s{len(opened)}", m, rows=rows)

    tb = np.ones(61)
    one = length_eval(m, regions, [64, 128], tb, segment=1000, open_store=open_store)
    seg = length_eval(m, regions, [64, 128], tb, segment=24, open_store=open_store)
    plain = length_eval(m, regions, [128], tb, segment=1000)
    for L in (64, 128):
        assert abs(one[L]["loss"] - seg[L]["loss"]) < 1e-5
        assert one[L]["store"]["entries_per_window"] > 0
    assert abs(one[128]["loss"] - plain[128]["loss"]) > 1e-6, "the store changed nothing"
    assert opened[:2] == [6, 3]  # one store per batch of windows, with a row per window


@pytest.mark.parametrize("t0", [0, 13])
def test_parallel_forward_with_a_store_is_idempotent(tmp_path, t0):
    """The store is read and written at the layer's edge: the same parallel call twice on the same state gives the
    same output and leaves the same store (a position is stored once; an entry evicted in a call is readable only
    from the chunk after its update, so the second call cannot read the first call's later evictions)."""
    model = _model(memory_size=3)
    ids = _ids(2, 50, seed=4)
    with Store.for_model(tmp_path / "s", model, rows=2, cfg=StoreConfig(topk=4, search="exact")) as store:
        with torch.no_grad():
            state = model(ids[:, :t0], model.init_state(2, store=store), return_state=True).state if t0 else \
                model.init_state(2, store=store)
            first = model(ids[:, t0:], state, return_state=True)
            content = [(store.layer(i).count, sorted(store.layer(i).index[0].pos[:store.layer(i).index[0].n].tolist()))
                       for i in store.layers]
            second = model(ids[:, t0:], state, return_state=True)
        assert torch.equal(first.logits, second.logits), "a repeated call read what the first call wrote"
        assert content == [(store.layer(i).count, sorted(store.layer(i).index[0].pos[:store.layer(i).index[0].n]
                                                         .tolist())) for i in store.layers], "entries added twice"
        assert all(c > 0 for c, _ in content), "nothing was stored: the test would see no double insert"
        fresh = _model(memory_size=3)
        with Store.for_model(tmp_path / "s2", fresh, rows=2, cfg=StoreConfig(topk=4, search="exact")) as other:
            with torch.no_grad():  # and it equals one call over the whole sequence
                whole = fresh(ids, fresh.init_state(2, store=other), return_state=True).logits
        assert_close(second.logits, whole[:, t0:], name="second call vs one call")


def test_store_entries_get_the_reference_gradients():
    """Backward through the store-reading attention: q, k, v, the fading and memory keys/values, and the store's
    retrieved keys and values all get the gradients of the sequential reference (`train_store_topk` trains the
    projections through exactly this)."""
    from bmojo.ops.attention import window_attention_ref, window_attention_shares
    from tests.ops.test_attention import _inputs, _opts, _segs

    T, W, C, q0, M, K = 29, 8, 4, 3, 6, 3
    t, kw = _inputs(T, W, C, q0, M, seeded(6))
    B, _, H, Dh = t["q"].shape
    g = seeded(7)
    ek = torch.randn(B, T, H, K, Dh, generator=g).requires_grad_()
    ev = torch.randn(B, T, H, K, Dh, generator=g).requires_grad_()
    evis = torch.rand(B, T, H, K, generator=g) > 0.3
    leaves = {**t, "store_k": ek, "store_v": ev}
    grads = {}
    for name, fn in (("shares", lambda *a, **k: window_attention_shares(*a, **k)[0]), ("ref", window_attention_ref)):
        for x in leaves.values():
            x.grad = None
        o = fn(t["q"], _segs(t, kw, store=(ek, ev, evis)), W, **_opts(kw))
        (o * torch.linspace(-1, 1, o.shape[-1])).pow(2).sum().backward()
        grads[name] = {n: x.grad.clone() for n, x in leaves.items()}
    for n in leaves:
        assert_close(grads["shares"][n], grads["ref"][n], name=f"d{n}")
    assert grads["ref"]["store_v"].abs().sum() > 0 and grads["ref"]["store_k"].abs().sum() > 0


def test_training_store_gradients_equal_the_reference_backend():
    """A model with train_store_topk: every parameter's gradient through its own training store is the one the
    sequential reference ops give (impl="ref" against impl="fast")."""
    ids = _ids(2, 45)
    grads = {}
    for impl in ("ref", "fast"):
        m = _model(train_store_topk=4, impl=impl).train()
        m(ids).logits.pow(2).mean().backward()
        grads[impl] = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert grads["ref"].keys() == grads["fast"].keys()
    for n in grads["ref"]:
        assert_close(grads["fast"][n], grads["ref"][n], rtol=1e-4, name=n)
    assert any("v_proj" in n for n in grads["ref"])


@pytest.mark.parametrize("T", [23, 61])
def test_edge_store_with_room_for_everything_reads_every_old_key_at_the_block_edge(tmp_path, T):
    """memory_rope=edge, fading off, a store read with top-k >= T: query i attends to its window at the keys' own
    positions and to every older key (memory or store) rotated at its block's edge e = i - i mod C - W.  Checked
    against a dense softmax built here from the projections (no code shared with the layer's store path)."""
    import math

    from bmojo.ops.rope import apply_rope, rope_cos_sin

    cfg = tiny("bmojo-paper", fading=False, memory_size=3, memory_rope="edge", n_kv_heads=4)
    torch.manual_seed(0)
    b = randomise_extras(BMojoMixer(cfg, 0)).eval()
    x = torch.randn(2, T, 32, generator=seeded(1))
    W, C, H, Dh = b.window, b.chunk, b.n_heads, b.head_dim
    with torch.no_grad(), _mixer_store(tmp_path, b, topk=T, search="exact") as store:
        st = b.init_state(2)
        st.store = store.layer(0)
        y, _ = b(x, st)
        a = b._attn_input(x, None, False)[0]
        q0, k0 = b.q_proj(a).view(2, T, H, Dh), b.k_proj(a).view(2, T, H, Dh)
        v = b.v_proj(a).view(2, T, H, Dh)
        rot = lambda t, p: apply_rope(t, *(c.view(*p.shape, 1, Dh) for c in rope_cos_sin(p.flatten(), Dh, b.rope_theta,
                                                                                            t.dtype, b.rope_fraction)))
        pos = torch.arange(T)
        q, k = rot(q0, pos), rot(k0, pos)
        out = torch.zeros(2, T, H, Dh)
        for i in range(T):
            e = torch.tensor(i - i % C - W)
            keys = torch.cat([rot(k0[:, :max(0, i - W + 1)], e.expand(max(0, i - W + 1))), k[:, max(0, i - W + 1):i + 1]], 1)
            s = torch.einsum("bhd,bjhd->bhj", q[:, i], keys) / math.sqrt(Dh)
            out[:, i] = torch.einsum("bhj,bjhd->bhd", s.softmax(-1), v[:, :i + 1])
        want = b.o_proj(out.reshape(2, T, H * Dh))
    assert_close(y, want, rtol=1e-4, name="edge store vs dense edge attention")
