"""Bad input gets a clear error before any compute, naming the field and the allowed values."""
import json

import pytest
import torch

from bmojo import BMojoLM, ConfigError, ModelConfig, count_params, preset, size_to_params
from tests.helpers import tiny


@pytest.mark.parametrize("field,value,match", [
    pytest.param("window", 0, r"window=0.*positive", id="window-0"),
    pytest.param("window", -3, r"window=-3", id="window-neg"),
    pytest.param("n_heads", 5, r"n_heads=5.*divide d_model=32", id="heads-not-dividing"),
    pytest.param("pattern", "BXA", r"pattern='BXA'.*unknown layer letter.*\['X'\].*allowed", id="bad-letter"),
    pytest.param("pattern", "", r"pattern=''", id="empty-pattern"),
    pytest.param("memory_size", -1, r"memory_size=-1.*>= 0", id="memory-neg"),
    pytest.param("chunk", 9, r"chunk=9.*1 .. window=8", id="chunk-gt-window"),
    pytest.param("selector", "surprise", r"selector='surprise'.*innovation", id="selector"),
    pytest.param("ssm_kind", "s4", r"ssm_kind='s4'.*mamba1", id="ssm-kind"),
    pytest.param("n_kv_heads", 3, r"n_kv_heads=3", id="kv-heads"),
    pytest.param("memory_decay", 0.0, r"memory_decay=0.0", id="decay"),
    pytest.param("train_store_topk", -2, r"train_store_topk=-2.*>= 0", id="train-store-topk"),
    pytest.param("impl", "cuda", r"impl='cuda'.*ref", id="impl"),
    pytest.param("score_layers", (5,), r"score_layers=\(5,\)", id="score-layers"),
])
def test_invalid_config_names_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        tiny("bmojo", **{field: value})


def test_unknown_fields_and_presets():
    with pytest.raises(ConfigError, match=r"unknown field.*\['windw'\]"):
        ModelConfig.from_dict({"windw": 3})
    with pytest.raises(ConfigError, match=r"unknown preset 'gpt'.*allowed"):
        preset("gpt")
    with pytest.raises(ConfigError, match=r"unknown ModelConfig field"):
        preset("bmojo", heads=3)


def test_config_json_round_trip_and_fingerprint():
    cfg = tiny("bmojo", score_layers=(1,))
    again = ModelConfig.from_json(cfg.to_json())
    assert again == cfg and again.fingerprint() == cfg.fingerprint()
    assert json.loads(cfg.to_json())["score_layers"] == [1]
    assert tiny("bmojo", impl="ref").fingerprint() == tiny("bmojo").fingerprint() != cfg.fingerprint()


@pytest.mark.parametrize("ids,err,match", [
    pytest.param(torch.tensor([[0, 61]]), ValueError, r"0 \.\. vocab_size-1 = 60.*61", id="id-too-large"),
    pytest.param(torch.tensor([[-1, 3]]), ValueError, r"vocab_size-1", id="id-negative"),
    pytest.param(torch.zeros(2, 3), TypeError, r"integer tensor.*float32", id="float-ids"),
    pytest.param(torch.zeros(2, 3, 4, dtype=torch.long), ValueError, r"\(B, T\).*\(2, 3, 4\)", id="rank-3"),
    pytest.param(torch.zeros(3, dtype=torch.long), ValueError, r"\(B, T\)", id="rank-1"),
])
def test_bad_token_ids(ids, err, match):
    m = BMojoLM(tiny("bmojo"))
    with pytest.raises(err, match=match):
        m(ids)


def test_decode_step_checks_id_values_only_when_asked():
    """A decode step checks shape and dtype always (no host sync); the value range with check_ids=True; a bad id
    is still rejected by the embedding lookup without it."""
    m = BMojoLM(tiny("bmojo"))
    with pytest.raises(ValueError, match=r"0 \.\. vocab_size-1 = 60.*61"):
        m.step(torch.tensor([61, 0]), m.init_state(2), check_ids=True)
    with pytest.raises(IndexError):
        m.step(torch.tensor([61, 0]), m.init_state(2))
    with pytest.raises(TypeError, match="integer tensor"):
        m.step(torch.zeros(2), m.init_state(2))


def test_decode_state_from_another_model():
    a, b = BMojoLM(tiny("bmojo")), BMojoLM(tiny("bmojo", memory_size=7))
    with pytest.raises(ValueError, match="another model"):
        a.step(torch.zeros(2, dtype=torch.long), b.init_state(2))
    with pytest.raises(ValueError, match="another model"):
        a(torch.zeros(2, 3, dtype=torch.long), b.init_state(2))
    with pytest.raises(ValueError, match="batch 2.*batch 3"):
        a.step(torch.zeros(3, dtype=torch.long), a.init_state(2))
    with pytest.raises(TypeError, match="ModelState"):
        a.step(torch.zeros(2, dtype=torch.long), [None])
    with pytest.raises(ValueError, match=r"\(B,\)"):
        a.step(torch.zeros(2, 1, dtype=torch.long), a.init_state(2))


@pytest.mark.parametrize("name", ["transformer", "swa", "mamba", "hybrid", "bmojo-f", "bmojo"])
def test_size_to_params(name):
    cfg = size_to_params(name, 200_000, n_layers=2, vocab_size=256)
    n = count_params(cfg)
    assert abs(n - 200_000) / 200_000 < 0.15, f"{name}: {n} params"
    assert BMojoLM(cfg).num_params() == n


def test_presets_are_the_special_cases():
    assert [preset(p).pattern for p in ("transformer", "swa", "mamba", "bmojo-f", "bmojo")] == list("ASMFB")
    m = preset("mamba")
    assert m.ssm_kind == "mamba1" and not m.mlp
    assert preset("hybrid").pattern == "MA" and preset("bmojo").ssm_kind == "mamba2"
    assert [preset("hybrid", n_layers=4).layer_kind(i) for i in range(4)] == list("MAMA")


def test_no_weight_decay_tags():
    m = BMojoLM(tiny("bmojo", n_layers=1))
    tagged = sorted(n for n, p in m.named_parameters() if getattr(p, "_no_weight_decay", False))
    assert tagged == ["layers.0.mixer.ssm.A_log", "layers.0.mixer.ssm.D", "layers.0.mixer.ssm.dt_bias"]


def test_mamba2_fields_are_checked_only_where_mamba2_heads_exist():
    from bmojo.config import ConfigError, ModelConfig

    ModelConfig(pattern="M", ssm_kind="mamba1", d_model=40, ssm_head_dim=32)  # E = 80: mamba1 has no heads
    ModelConfig(pattern="A", d_model=40, ssm_head_dim=32)  # no SSM at all
    with pytest.raises(ConfigError, match="ssm_head_dim=32: must divide E = expand\\*d_model = 80"):
        ModelConfig(pattern="B", ssm_kind="mamba2", d_model=40, ssm_head_dim=32)
    with pytest.raises(ConfigError, match="n_groups"):
        ModelConfig(pattern="M", ssm_kind="mamba2", d_model=64, ssm_head_dim=32, n_groups=3)


def test_a_retired_field_loads_only_at_its_old_value_and_keeps_the_fingerprint():
    """`aux_loss_weight` is gone: a config or checkpoint written with it at 1.0 (what every model behaved as) loads,
    with the fingerprint it had (decode states and stores made with it still match); any other value is an error
    that names the field."""
    cfg = preset("bmojo")
    old = {**cfg.to_dict(), "aux_loss_weight": 1.0}
    loaded = ModelConfig.from_json(json.dumps(old))
    assert loaded == cfg and not hasattr(loaded, "aux_loss_weight")
    import hashlib
    old.pop("impl")
    assert cfg.fingerprint() == hashlib.sha1(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    with pytest.raises(ConfigError, match="aux_loss_weight=0.5"):
        ModelConfig.from_dict({**cfg.to_dict(), "aux_loss_weight": 0.5})


def test_every_option_is_in_the_docs_option_table():
    """docs/model.md's option table names every ModelConfig field (where it acts, and what uses it or why it stays),
    and no field that does not exist."""
    import dataclasses
    import re
    from pathlib import Path

    text = Path(__file__).resolve().parents[2].joinpath("docs", "model.md").read_text()
    table = text.split("### Every option")[1].split("\n\n| option |")[1].split("\n\n")[0]
    named = {name for row in table.splitlines()[2:] for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert named == fields, f"missing from the table: {sorted(fields - named)}; not fields: {sorted(named - fields)}"
