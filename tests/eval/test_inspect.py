"""`bmojo inspect`: the numbers it reports are the model's own (shares from the same softmax, summing to 1;
memory membership from the layer's selection), and the page is self-contained and renders."""
import json
import shutil
import subprocess

import pytest
import torch

from bmojo import BMojoLM
from bmojo.data.text.tokenizer import ByteTokenizer
from bmojo.eval.inspect import report
from bmojo.layers.bmojo import BMojoMixer
from bmojo.memory import Store
from bmojo.ops.attention import window_attention, window_attention_shares
from bmojo.train.checkpoint import save_checkpoint
from tests.helpers import assert_close, seeded, tiny
from tests.ops.test_attention import CASES, _inputs, _opts, _segs


@pytest.mark.parametrize("T,W,C,q0,M", CASES)
def test_shares_come_from_the_same_attention(T, W, C, q0, M):
    t, kw = _inputs(T, W, C, q0, M, seeded(T + 2 * W))
    args = (t["q"], _segs(t, kw), W)
    with torch.no_grad():
        o, shares = window_attention_shares(*args, **_opts(kw))
        assert_close(o, window_attention(*args, **_opts(kw)), name="output")
    total = sum(shares.values())
    assert_close(total, torch.ones_like(total), name="shares sum to 1")


def _model():
    torch.manual_seed(0)
    return BMojoLM(tiny("bmojo", vocab_size=256)).eval()


def test_report_matches_the_model_internals(tmp_path):
    model = _model()
    ids = torch.randint(1, 256, (60,), generator=seeded(3))
    rep = report(model, ids, [chr(65 + i % 26) for i in range(60)], with_store=True)
    W, C = model.cfg.window, model.cfg.chunk_size
    with torch.no_grad(), Store.for_model(tmp_path / "s", model) as store:  # the same read, with its own store
        state = model(ids[None], model.init_state(1, store=store), return_state=True).state
        stored = [set(store.layer(i).index[0].pos[:store.layer(i).index[0].n].tolist()) for i in range(2)]
    for L, layer_state, in_store in zip(rep["layers"], state.layers, stored):
        raw = torch.tensor(L["shares"]["raw"])
        assert torch.allclose(raw[:W], torch.ones(W))  # nothing older than the window exists yet
        assert all(abs(sum(L["shares"][k][i] for k in L["shares"]) - 1) < 1e-5 for i in range(60))
        final = layer_state.mem.pos[0]
        assert all(L["in_memory"][p] for p in final[final >= 0].tolist())  # the final memory is marked
        assert sum(L["in_memory"]) >= int((final >= 0).sum())
        assert {p for p, s in enumerate(L["in_store"]) if s} == in_store
        # every token of a completed chunk is in the final memory or in the store
        assert set(range(60 // C * C)) == in_store | set(final[final >= 0].tolist())
        assert max(L["shares"]["store"]) > 0 and max(L["shares"]["store"][:W]) == 0  # nothing old enough before W
        assert len(L["scores"]) == 60 and min(L["scores"]) >= 0
    with torch.no_grad():  # recording is an argument: it computes beside the kernels, never instead of them
        out, rec = model(ids[None]), model(ids[None], record=True)
        assert torch.equal(rec.logits, out.logits) and out.records is None
        assert [r is not None for r in rec.records] == [isinstance(b.mixer, BMojoMixer) for b in model.layers]
    with torch.no_grad():  # and the model computes as before
        assert torch.equal(model(ids[None]).logits, _model()(ids[None]).logits)


def test_report_without_a_store_runs_the_model_as_it_is():
    """By default no store is attached: nothing goes to one, its share is 0, and the shares are those of the model's
    own forward (window, fading, eidetic only)."""
    model = _model()
    ids = torch.randint(1, 256, (60,), generator=seeded(3))
    rep = report(model, ids, [chr(65 + i % 26) for i in range(60)])
    with_store = report(model, ids, [chr(65 + i % 26) for i in range(60)], with_store=True)
    for L, S in zip(rep["layers"], with_store["layers"]):
        assert not any(L["in_store"]) and max(L["shares"]["store"]) == 0
        assert all(abs(sum(L["shares"][k][i] for k in L["shares"]) - 1) < 1e-5 for i in range(60))
        assert max(S["shares"]["store"]) > 0  # the store changes what the model reads
        assert L["in_memory"] == S["in_memory"]


def test_command_writes_a_self_contained_page_that_renders(tmp_path):
    from bmojo.cli.main import main

    save_checkpoint(tmp_path / "ck", _model(), {"tokenizer": ByteTokenizer().to_dict()})
    text = "def f(x):\n    return x + 1  # a comment </script><b>not html</b>\n" * 3
    assert main(["inspect", "--checkpoint", str(tmp_path / "ck"), "--text", text, "--out", str(tmp_path / "o")]) == 0
    page = (tmp_path / "o" / "inspect.html").read_text()
    assert "http://" not in page and "https://" not in page  # no network
    assert page.count("</script>") == 2  # the text cannot close the data block
    rep = json.loads((tmp_path / "o" / "inspect.json").read_text())
    assert "".join(rep["tokens"]) == text and len(rep["layers"]) == 2
    assert (tmp_path / "o" / "inspect.png").stat().st_size > 10_000
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium (Debian's `chromium`) is not installed")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (tmp_path / "o" / "inspect.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('<span class="mem"') + dom.stdout.count("<span ") >= len(rep["tokens"])  # drawn
    assert "<td>0</td>" in dom.stdout or "<td>1</td>" in dom.stdout  # the share table was filled in


def test_inspect_refuses_models_without_bmojo_layers(tmp_path):
    from bmojo.cli.main import main

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ck", BMojoLM(tiny("transformer", vocab_size=256)), {"tokenizer": ByteTokenizer().to_dict()})
    assert main(["inspect", "--checkpoint", str(tmp_path / "ck"), "--text", "abc"]) == 2
    assert main(["inspect", "--checkpoint", str(tmp_path / "ck"), "--text", "", "--out", str(tmp_path / "o")]) == 2


def test_task_checkpoint_shows_which_needed_tokens_the_memory_kept(tmp_path, capsys):
    """A checkpoint trained on mqar is read on one task sequence: tokens labelled by role, and a line per layer
    counting the pair tokens the memory held, which matches the report's own memory membership."""
    from bmojo.cli.main import main

    model = BMojoLM(tiny("bmojo", vocab_size=64, n_layers=1, memory_size=6, chunk=4, selection_gate=True,
                         gate_read="logit"))
    opts = {"vocab_size": 64, "seq_len": 40, "num_kv_pairs": 4, "query_start": 20}
    save_checkpoint(tmp_path / "ck", model, {"task": "mqar", "task_options": opts})
    assert main(["inspect", "--checkpoint", str(tmp_path / "ck"), "--example", "3", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "o" / "inspect.json").read_text())
    assert rep["task_keep"] == list(range(8))
    assert [t.strip()[0] for t in rep["tokens"][:8]] == list("KVKVKVKV")
    assert sum(t.startswith("?") for t in rep["tokens"]) == 4
    held = sum(rep["layers"][0]["in_final_memory"][p] for p in range(8))
    ever = sum(rep["layers"][0]["in_memory"][p] for p in range(8))
    assert f"the memory holds {held} of the 8 tokens" in out and f"{ever} of them were in it at some update" in out
    assert held <= 6 and sum(rep["layers"][0]["in_final_memory"]) == 6  # what a memory of M=6 holds at the end


def test_example_needs_a_task_checkpoint(tmp_path, capsys):
    from bmojo.cli.main import main

    save_checkpoint(tmp_path / "ck", BMojoLM(tiny("bmojo", n_layers=1)), {})
    assert main(["inspect", "--checkpoint", str(tmp_path / "ck"), "--example", "0"]) == 2
    assert "names no synthetic task" in capsys.readouterr().err
