"""The recipes in configs/ and `bmojo train --dry-run`: every recipe is a valid config whose model is within 5% of
the size in its name, and the dry run plans a run from the settings alone, on the meta device."""
import json
from pathlib import Path

import pytest
import torch

from bmojo.cli.main import main
from bmojo.cli.train import read_config
from bmojo.models import count_params
from bmojo.train import TrainConfig
from bmojo.train.lm import LMSpec, model_config
from bmojo.train.plan import plan

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SIZES = {"130m": 130e6, "370m": 370e6, "790m": 790e6, "1.4b": 1.4e9}
RECIPES = sorted(CONFIGS.glob("*.json"))


def test_every_model_and_size_has_a_recipe():
    names = {p.stem for p in RECIPES}
    assert names == {f"{m}-{s}" for m in ("transformer", "mamba", "hybrid", "bmojo-f", "bmojo") for s in SIZES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_is_valid_and_its_size_is_its_name(path):
    run, model, train = read_config(str(path))
    vocab = run.pop("vocab_size")
    spec = LMSpec(run["preset"], run["seq_len"], run["params"], model)
    n = count_params(model_config(spec, vocab))
    size = SIZES[path.stem.rsplit("-", 1)[1]]
    assert abs(n - size) <= 0.05 * size, f"{path.name}: {n:,} parameters"
    assert spec.seq_len == 2048 and TrainConfig(**train).precision == "bf16-mixed"


def test_dry_run_plans_without_weights(monkeypatch, capsys):
    from bmojo.models import lm

    built = []
    init = lm.BMojoLM.__init__

    def spy(self, cfg):
        init(self, cfg)
        built.append({p.device.type for p in self.parameters()})

    monkeypatch.setattr(lm.BMojoLM, "__init__", spy)
    assert main(["train", "--config", str(CONFIGS / "bmojo-130m.json"), "--dry-run", "--processes", "8"]) == 0
    out = capsys.readouterr().out
    p = json.loads(out.strip().splitlines()[-1])
    assert built and all(devices == {"meta"} for devices in built)
    assert abs(p["params"] - 130e6) <= 0.05 * 130e6 and "parameters (" in out
    assert p["tokens_per_step"] == 256 * 2048 and p["micro_batch_rows"] == 256 // 8 // 8
    assert p["decode_state_bytes"] > 0 and p["memory_per_process"]["activations"] > 0


def test_plan_memory_follows_the_options():
    cfg = model_config(LMSpec("bmojo", 256, 1_000_000, {"d_model": 128, "n_layers": 4, "window": 64, "chunk": 32,
                                                          "memory_size": 16, "n_heads": 4}), 256)
    base = TrainConfig(batch_size=8, grad_accum=1)
    a = plan(cfg, base, 256)
    ckpt = plan(cfg, TrainConfig(batch_size=8, checkpoint_activations=True), 256)
    accum = plan(cfg, TrainConfig(batch_size=8, grad_accum=4), 256)
    fsdp = plan(cfg, TrainConfig(batch_size=8, parallel="fsdp"), 256, processes=4)
    ddp = plan(cfg, TrainConfig(batch_size=8), 256, processes=4)
    act = lambda p: p["memory_per_process"]["activations"]
    states = lambda p: p["memory_per_process"]["weights_grads_adamw"]
    assert act(ckpt) < 0.6 * act(a)
    assert act(accum) == pytest.approx(act(a) / 4, rel=0.05)
    assert states(a) == 16 * a["params"] == states(ddp) == 4 * states(fsdp)
    assert a["params"] == sum(p.numel() for p in torch.nn.Module.parameters(__import__("bmojo").BMojoLM(cfg)))
    with pytest.raises(ValueError, match="does not split into 3"):
        plan(cfg, base, 256, processes=3)
