"""bmojo models as transformers classes: Auto* registration, save_pretrained / from_pretrained in
safetensors, generate (greedy equals bmojo's own decoding; sampling) with bmojo's bounded decode state, and
the tokenizer saved and loaded with the model."""
import pytest
import torch

from bmojo import BMojoLM
from bmojo.data.text.tokenizer import BPETokenizer, ByteTokenizer, tokenizer_files
from bmojo.train.checkpoint import save_checkpoint
from tests.helpers import assert_close, seeded, tiny

transformers = pytest.importorskip("transformers")
from bmojo.hf.export import export, hf_tokenizer  # noqa: E402
from bmojo.hf.modeling import BMojoForCausalLM  # noqa: E402

AutoModelForCausalLM, AutoTokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer


def _model(name="bmojo", vocab=61):
    torch.manual_seed(0)
    return BMojoLM(tiny(name, vocab_size=vocab)).eval()


def _greedy(model, ids, n):
    with torch.no_grad():
        out = model(ids, return_state=True)
        state, tok, toks = out.state, out.logits[:, -1].argmax(-1), []
        for _ in range(n):
            toks.append(tok)
            logits, state = model.step(tok, state)
            tok = logits.argmax(-1)
    return torch.stack(toks, 1)


@pytest.mark.parametrize("name", ["bmojo", "transformer", "mamba"])
def test_save_load_and_greedy_generate_equal_bmojo(tmp_path, name):
    model = _model(name)
    BMojoForCausalLM.from_bmojo(model).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "BMojoForCausalLM"
    ids = torch.randint(0, 61, (2, 11), generator=seeded(1))
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, model(ids).logits)
    out = hf.generate(ids, max_new_tokens=24, do_sample=False)
    assert torch.equal(out[:, :11], ids)
    assert torch.equal(out[:, 11:], _greedy(model, ids, 24))


def test_sampling_is_seeded_and_in_vocabulary(tmp_path):
    hf = BMojoForCausalLM.from_bmojo(_model())
    ids = torch.randint(0, 61, (1, 5), generator=seeded(2))
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(hf.generate(ids, max_new_tokens=30, do_sample=True, top_k=20, temperature=0.9))
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (1, 35)
    assert int(runs[0].min()) >= 0 and int(runs[0].max()) < 61


@pytest.mark.parametrize("name", ["bmojo", "swa", "mamba"])
def test_generate_keeps_a_bounded_decode_state(name):
    """The state generate carries is the same size after 10 tokens and after 300."""
    hf = BMojoForCausalLM.from_bmojo(_model(name))
    sizes = []
    original = hf._update_model_kwargs_for_generation

    def record(outputs, model_kwargs, *a, **k):
        sizes.append(outputs.bmojo_state.nbytes())
        return original(outputs, model_kwargs, *a, **k)

    hf._update_model_kwargs_for_generation = record
    hf.generate(torch.zeros(1, 4, dtype=torch.long), max_new_tokens=300, do_sample=False)
    assert len(sizes) >= 299 and len(set(sizes)) == 1, sorted(set(sizes))


def test_labels_give_the_shifted_loss_and_padding_is_refused():
    model = _model()
    hf = BMojoForCausalLM.from_bmojo(model)
    ids = torch.randint(0, 61, (2, 9), generator=seeded(4))
    out = hf(ids, labels=ids)
    want = torch.nn.functional.cross_entropy(model(ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert torch.allclose(out.loss, want)
    mask = torch.ones_like(ids)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="attention_mask has zeros"):
        hf(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="beam search"):
        hf.generate(ids, max_new_tokens=3, num_beams=2)


def _bpe():
    texts = ["def f(x):\n    return x + 1\n", "the quick brown fox jumps over the lazy dog " * 3, "héllo wörld ☃"]
    return BPETokenizer.train(texts * 5, vocab_size=300)


@pytest.mark.parametrize("tok", [ByteTokenizer(), _bpe()], ids=["byte", "bpe"])
def test_export_writes_model_and_tokenizer_for_auto_classes(tmp_path, tok):
    model = _model("bmojo", vocab=tok.vocab_size)
    save_checkpoint(tmp_path / "ck", model, {"tokenizer": tok.to_dict()}, files=tokenizer_files(tok))
    export(tmp_path / "ck", tmp_path / "hf")
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "def héllo(x):\n\treturn x ☃\x00 end"
    ids = hf_tok(text, add_special_tokens=False).input_ids
    assert ids == tok.encode(text).tolist()
    assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token_id == 0 == hf_tokenizer(tok).eos_token_id
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.tensor([ids[:8]])
    with torch.no_grad():
        assert torch.equal(hf(x).logits, model(x).logits)


def test_an_export_loads_in_a_fresh_interpreter_with_trust_remote_code(tmp_path):
    """As HF users load custom models: no bmojo import before from_pretrained; the logits equal bmojo's; and
    `bmojo convert` of the export gives the same model back."""
    import json
    import os
    import subprocess
    import sys

    from bmojo.data.text.tokenizer import ByteTokenizer
    from bmojo.hf import convert
    from bmojo.train.checkpoint import load_checkpoint

    model = _model("bmojo", vocab=256)
    save_checkpoint(tmp_path / "ck", model, {"tokenizer": ByteTokenizer().to_dict()})
    export(tmp_path / "ck", tmp_path / "hf")
    x = torch.tensor([[5, 17, 99, 3, 250, 8, 1, 42]])
    with torch.no_grad():
        want = model(x).logits[0, -1].tolist()
    code = ("import json, sys, torch\n"
            "from transformers import AutoModelForCausalLM\n"
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
            "assert 'bmojo' not in sys.modules or type(m).__name__ == 'BMojoForCausalLM'\n"
            "with torch.no_grad():\n"
            f"    print(json.dumps(m(torch.tensor({x.tolist()})).logits[0, -1].tolist()))\n")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "hf")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert_close(torch.tensor(json.loads(r.stdout.splitlines()[-1])), torch.tensor(want), rtol=1e-6)
    back, _ = load_checkpoint(convert(tmp_path / "hf", tmp_path / "back"))
    with torch.no_grad():
        assert torch.equal(back(x).logits, model(x).logits)
