"""HF Mamba, Llama and Mistral checkpoints convert to bmojo's mamba, transformer and swa presets with the same
logits (max abs error <= 1e-4, fp32), from small random HF models saved to a temporary folder; bad
checkpoints get errors that name the problem, and nothing is unpickled."""
import json

import pytest
import torch

from bmojo.hf import convert, load_hf, read_hf_dir
from bmojo.train.checkpoint import CheckpointError, load_checkpoint
from tests.helpers import assert_close, seeded

transformers = pytest.importorskip("transformers")
V = 97


def _mamba(tmp_path):
    cfg = transformers.MambaConfig(vocab_size=V, hidden_size=48, state_size=8, num_hidden_layers=2, expand=2,
                                   conv_kernel=4, use_mambapy=False)
    return transformers.MambaForCausalLM(cfg)


def _mamba_odd(tmp_path):
    """Inner width 2 x 40 = 80 (no multiple of 32, a mamba2-only constraint) and no conv bias (exactly zero)."""
    cfg = transformers.MambaConfig(vocab_size=V, hidden_size=40, state_size=8, num_hidden_layers=2, expand=2,
                                   conv_kernel=4, use_conv_bias=False, use_mambapy=False)
    return transformers.MambaForCausalLM(cfg)


def _llama(tmp_path, tie=False):
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=tie, rope_theta=5000.0)
    return transformers.LlamaForCausalLM(cfg)


def _mistral(tmp_path):
    cfg = transformers.MistralConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                     sliding_window=16)
    return transformers.MistralForCausalLM(cfg)


def _saved(make, tmp_path, **kw):
    torch.manual_seed(0)
    model = make(tmp_path, **kw).eval()
    with torch.no_grad():  # HF's init leaves some tensors (norms, A_log) at constants: perturb them all
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


@pytest.mark.parametrize("make,preset,kw", [(_mamba, "mamba", {}), (_mamba_odd, "mamba", {}),
                                           (_llama, "transformer", {}), (_llama, "transformer", {"tie": True}),
                                           (_mistral, "swa", {})],
                         ids=["mamba", "mamba-width80-noconvbias", "llama", "llama-tied", "mistral-swa"])
def test_converted_logits_equal_the_source(tmp_path, make, preset, kw):
    src, folder = _saved(make, tmp_path, **kw)
    ids = torch.randint(0, V, (2, 40), generator=seeded(1))  # 40 > the Mistral window of 16
    ours = load_hf(folder)
    assert ours.cfg.pattern == {"mamba": "M", "transformer": "A", "swa": "S"}[preset]
    with torch.no_grad():
        want = src(ids).logits
        got = ours(ids).logits
    assert (got - want).abs().max().item() <= 1e-4, (got - want).abs().max().item()
    # and through a saved bmojo checkpoint, decoding token by token
    model, meta = load_checkpoint(convert(folder, tmp_path / "bmojo"))
    assert meta["source"]["hf_model_type"] == src.config.model_type
    state = model.init_state(2)
    with torch.no_grad():
        steps = [model.step(ids[:, t], state)[0] for t in range(ids.shape[1])]
    assert_close(torch.stack(steps, 1), want, rtol=1e-4, name="decoded logits")


def test_sharded_checkpoints_load_and_shard_names_cannot_escape(tmp_path):
    src = _saved(_llama, tmp_path)[0]
    src.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = tmp_path / "sharded" / "model.safetensors.index.json"
    assert index.is_file() and len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    ids = torch.randint(0, V, (1, 12), generator=seeded(5))
    with torch.no_grad():
        assert (load_hf(tmp_path / "sharded")(ids).logits - src(ids).logits).abs().max().item() <= 1e-4
    data = json.loads(index.read_text())
    data["weight_map"]["lm_head.weight"] = "../../etc/passwd"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="shard names must be plain file names"):
        read_hf_dir(tmp_path / "sharded")


def _rewrite_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_unsupported_architecture_is_named(tmp_path):
    _, folder = _saved(_llama, tmp_path)
    _rewrite_config(folder, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(CheckpointError, match=r"unsupported architecture: model_type='gpt2'.*GPT2LMHeadModel"):
        load_hf(folder)


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    _, folder = _saved(_llama, tmp_path)
    _rewrite_config(folder, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match=r"missing tensors \['model\.layers\.2\.input_layernorm\.weight'"):
        load_hf(folder)
    _rewrite_config(folder, num_hidden_layers=2, intermediate_size=100)
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight: shape \(96, 64\)"):
        load_hf(folder)


def test_leftover_tensors_and_unsupported_options_are_refused(tmp_path):
    _, folder = _saved(_llama, tmp_path)
    _rewrite_config(folder, attention_bias=True)
    with pytest.raises(CheckpointError, match="attention_bias"):
        load_hf(folder)
    _rewrite_config(folder, attention_bias=False, num_hidden_layers=1)
    with pytest.raises(CheckpointError, match=r"no place for: \['model\.layers\.1\."):
        load_hf(folder)


def test_pickle_only_and_corrupt_weights_are_refused_without_unpickling(tmp_path, monkeypatch):
    _, folder = _saved(_llama, tmp_path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"no safetensors weights; it has only \['pytorch_model\.bin'\].*unpickle"):
        read_hf_dir(folder)
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_hf_dir(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        read_hf_dir(folder)
    with pytest.raises(CheckpointError, match="config.json: missing"):
        read_hf_dir(tmp_path)


def test_convert_and_export_commands(tmp_path, capsys):
    from bmojo.cli.main import main

    src, folder = _saved(_mistral, tmp_path)
    assert main(["convert", str(folder), str(tmp_path / "ck"), "--window", "none"]) == 0
    model, _ = load_checkpoint(tmp_path / "ck")
    assert model.cfg.pattern == "A"  # --window none: full attention
    assert main(["export", str(tmp_path / "ck"), str(tmp_path / "hf2")]) == 0
    assert (tmp_path / "hf2" / "model.safetensors").is_file()
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for f in [*(tmp_path / "ck").iterdir(), *(tmp_path / "hf2").iterdir()]:  # not 0600: as any new file here
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
    before = (tmp_path / "hf2" / "model.safetensors").read_bytes()
    capsys.readouterr()
    for cmd in (["export", str(tmp_path / "ck"), str(tmp_path / "hf2")], ["convert", str(folder), str(tmp_path / "ck")]):
        assert main(cmd) == 2 and "--overwrite" in capsys.readouterr().err  # nothing replaced without the flag
    assert (tmp_path / "hf2" / "model.safetensors").read_bytes() == before
    assert main(["export", str(tmp_path / "ck"), str(tmp_path / "hf2"), "--overwrite"]) == 0
    assert main(["convert", str(folder), str(tmp_path / "x"), "--window", "-3"]) == 2
    assert "--window '-3'" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2


def test_overwrite_replaces_what_the_command_wrote_and_keeps_the_users_files(tmp_path):
    """One rule for export and convert: --overwrite leaves nothing stale of the earlier output and never deletes
    a file the user put in the folder."""
    from bmojo.cli.main import main
    from bmojo.data.text.tokenizer import ByteTokenizer
    from bmojo.models import BMojoLM
    from bmojo.train.checkpoint import save_checkpoint
    from tests.helpers import tiny

    m = BMojoLM(tiny("bmojo", vocab_size=256))
    save_checkpoint(tmp_path / "lm", m, {"tokenizer": ByteTokenizer().to_dict()})
    save_checkpoint(tmp_path / "task", m, {})  # no tokenizer: an export of it writes none
    out = tmp_path / "hf_out"
    assert main(["export", str(tmp_path / "lm"), str(out)]) == 0
    assert (out / "tokenizer.json").is_file()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(tmp_path / "task"), str(out), "--overwrite"]) == 0
    assert not (out / "tokenizer.json").exists()  # the earlier export's tokenizer is not left behind
    assert (out / "notes.txt").read_text() == "mine"
    _, folder = _saved(_mistral, tmp_path)
    ck = tmp_path / "ck"
    assert main(["convert", str(folder), str(ck)]) == 0
    (ck / "notes.txt").write_text("mine")
    assert main(["convert", str(folder), str(ck), "--overwrite"]) == 0
    assert (ck / "notes.txt").read_text() == "mine"
    load_checkpoint(ck)


def test_a_converted_checkpoint_generates_with_the_tokenizer_it_came_with(tmp_path, capsys):
    from bmojo.cli.main import main
    from bmojo.train.checkpoint import load_lm_checkpoint
    from tests.helpers import hf_tokenizer_folder

    tok = hf_tokenizer_folder(tmp_path / "hf", ["alpha beta gamma delta " * 50, "the quick brown fox " * 50])
    cfg = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "ck")]) == 0
    _, _, loaded = load_lm_checkpoint(tmp_path / "ck")
    assert loaded.sep_id == tok.token_to_id("<s>") and loaded.encode("alpha beta").tolist() == \
        tok.encode("alpha beta", add_special_tokens=False).ids
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(tmp_path / "ck"), "--prompt", "alpha beta", "--max-new-tokens", "4",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("alpha beta")


def test_a_converted_checkpoint_trains_further_and_evaluates_with_its_tokenizer(tmp_path, texts, capsys):
    """`bmojo train --init` starts from the converted weights (the corpus tokenized with the tokenizer the model
    came with, by default); `bmojo eval ppl` scores the converted checkpoint on such a corpus."""
    import json

    from safetensors.torch import load_file

    from bmojo.cli.main import main
    from bmojo.train.checkpoint import read_meta
    from tests.helpers import hf_tokenizer_folder

    tok = hf_tokenizer_folder(tmp_path / "hf", [p.read_text() for p in sorted(texts.rglob("*.txt"))])
    cfg = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    ck, run, data = tmp_path / "ck", tmp_path / "run", tmp_path / "data"
    assert main(["convert", str(tmp_path / "hf"), str(ck)]) == 0
    train = ["train", "--init", str(ck), "--corpus", str(texts), "--data", str(data), "--seq-len", "16",
             "--batch-size", "2", "--lr", "1e-3", "--warmup", "1", "--eval-every", "2", "--eval-batches", "1",
             "--progress", "false", "--out", str(run)]
    assert main([*train, "--steps", "2"]) == 0
    meta = read_meta(run / "checkpoint")
    assert meta["init"]["checkpoint"] == str(ck) and meta["init"]["from"] == "llama"
    assert meta["tokenizer"]["kind"] == "file" and meta["tokenizer"]["sep_id"] == tok.token_to_id("<s>")
    assert meta["model"] == {**read_meta(ck)["model"], "max_seq_len": 16 * 16}
    start, now = load_file(str(ck / "model.safetensors")), load_file(str(run / "checkpoint" / "model.safetensors"))
    moved = max((now[k] - start[k]).abs().max().item() for k in start)
    assert 0 < moved < 5e-3  # two AdamW steps of lr 1e-3 from the converted weights, not from a fresh init
    assert main([*train, "--steps", "3", "--resume"]) == 2  # --resume takes the start from the run, not --init
    assert "leave out --init" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(run), "--steps", "3", "--progress", "false"]) == 0
    assert read_meta(run / "checkpoint")["step"] == 3
    # options that choose another model, or a corpus of another tokenizer, are refused before training
    capsys.readouterr()
    assert main([*train, "--steps", "1", "--preset", "mamba", "--out", str(tmp_path / "r2")]) == 2
    assert "leave out --preset" in capsys.readouterr().err
    assert main([*train, "--steps", "1", "--tokenizer", "byte", "--out", str(tmp_path / "r3")]) == 2
    assert "the checkpoint's tokenizer is file" in capsys.readouterr().err and not (tmp_path / "r3").exists()
    # eval ppl on the converted checkpoint: a corpus and a length must be named, as it records neither
    corpus = str(meta["corpus"]["folder"])
    ppl = ["eval", "ppl", "--checkpoint", str(ck), "--factors", "1,2", "--regions", "2", "--out", str(tmp_path / "ev")]
    assert main(ppl) == 2
    assert "--corpus" in capsys.readouterr().err
    assert main([*ppl, "--corpus", corpus]) == 2
    assert "--train-len" in capsys.readouterr().err
    assert main([*ppl, "--corpus", str(texts), "--data", str(data), "--train-len", "16"]) == 0  # text: prepared
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())  # with the checkpoint's tokenizer, as train did
    assert ev["corpus"] == corpus
    assert sorted(ev["results"], key=int) == ["16", "32"] and ev["train_len"] == 16
    assert all(1 < r["ppl"] < 2 * tok.get_vocab_size() for r in ev["results"].values())
    byte_corpus = str(tmp_path / "bytes")
    assert main(["data", "prepare", "--corpus", str(texts), "--data", byte_corpus]) == 0
    capsys.readouterr()
    assert main([*ppl, "--corpus", str(next(p.parent for p in (tmp_path / "bytes").rglob("manifest.json"))),
                 "--train-len", "16"]) == 2
    assert "--tokenizer" in capsys.readouterr().err
