"""The training loop: learns, stops early, logs JSONL, checkpoints (safetensors + JSON), resumes exactly,
and rejects corrupt or foreign checkpoints with a clear error."""
import json

import numpy as np
import pytest
import torch

from bmojo import BMojoLM
from bmojo.data.synthetic import batch_stream, make_task
from bmojo.train import CheckpointError, TrainConfig, load_checkpoint, save_checkpoint, train
from bmojo.train.optim import lr_at, param_groups
from tests.helpers import tiny


def _setup(seed=0):
    _, gen = make_task("mqar", vocab_size=32, seq_len=24, num_kv_pairs=3)
    torch.manual_seed(seed)
    model = BMojoLM(tiny("bmojo", vocab_size=32, n_layers=1, max_seq_len=32))
    evals = [gen(32, np.random.default_rng(99))]
    return model, batch_stream(gen, 8, seed=1), evals


def test_train_logs_checkpoints_and_reloads(tmp_path):
    model, data, evals = _setup()
    res = train(model, TrainConfig(steps=12, batch_size=8, eval_every=6, log_every=3, progress=False), data,
                eval_batches=evals, out_dir=tmp_path, meta={"task": "mqar"})
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6, 9, 12] and "eval_acc" in rows[1] and "tokens_per_s" in rows[0]
    loaded, meta = load_checkpoint(res.checkpoint)
    assert meta["step"] == 12 and meta["task"] == "mqar" and meta["eval"]["acc"] == res.eval["acc"]
    ids = torch.randint(0, 32, (2, 10))
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["config.json", "model.safetensors",
                                                                           "optimizer.safetensors"]


def test_resume_equals_uninterrupted(tmp_path):
    cfg = TrainConfig(steps=10, batch_size=8, eval_every=0, log_every=5, progress=False)
    full, data, _ = _setup()
    train(full, cfg, data)
    # 4 steps with a checkpoint, then a resume into a differently initialised model up to 10
    first, data, _ = _setup()
    train(first, TrainConfig(**{**cfg.to_dict(), "steps": 4}), data, out_dir=tmp_path)
    resumed, data, _ = _setup(seed=123)  # different init: everything must come from the checkpoint
    res = train(resumed, cfg, data, out_dir=tmp_path, resume=True)
    assert res.steps == 10
    for (n, a), b in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), f"{n} differs after resume"


def test_early_stop_at_target_accuracy():
    model, _, _ = _setup()
    ids = torch.randint(0, 32, (8, 12), generator=torch.Generator().manual_seed(0))
    batch = (ids, torch.full_like(ids, 5))  # always answer 5: learnt in a few steps
    res = train(model, TrainConfig(steps=200, batch_size=8, eval_every=2, target_acc=0.99, warmup=0, progress=False),
                lambda step: batch, eval_batches=[batch])
    assert res.stopped_early and res.steps < 200 and res.eval["acc"] >= 0.99 and res.steps % 2 == 0


def test_no_weight_decay_groups_and_schedule():
    model, _, _ = _setup()
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert any(getattr(p, "_no_weight_decay", False) for p in no_decay["params"])
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3) and lr_at(55, cfg) < lr_at(20, cfg)


def test_bad_checkpoints_get_clear_errors(tmp_path):
    model, _, _ = _setup()
    good = save_checkpoint(tmp_path / "ok", model, {"step": 0})
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(CheckpointError, match="format is None.*another tool"):
        load_checkpoint(tmp_path / "foreign")
    (good / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="model.safetensors: SHA-256 .* does not match"):
        load_checkpoint(good)
    meta = json.loads((good / "config.json").read_text())
    del meta["sha256"]  # a checkpoint from before checksums: the file itself is still checked
    (good / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(good)
    other = save_checkpoint(tmp_path / "other", BMojoLM(tiny("transformer", vocab_size=32, n_layers=1)), {"step": 0})
    meta = json.loads((other / "config.json").read_text())
    meta["model"] = tiny("bmojo", vocab_size=32, n_layers=1).to_dict()  # weights of one model, config of another
    (other / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="missing tensors"):
        load_checkpoint(other)
    (other / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(other)


def test_train_config_errors():
    from bmojo.config import ConfigError

    with pytest.raises(ConfigError, match="TrainConfig.steps=0"):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError, match="unknown field"):
        TrainConfig.from_dict({"stepz": 3})


def _poison_after(model, step_to_break: int, module_name: str):
    """From the given step on, the named module's output becomes NaN (a forward hook counting calls in training)."""
    mod = dict(model.named_modules())[module_name]
    calls = {"n": 0}

    def hook(m, i, o):
        if m.training:
            calls["n"] += 1
        if calls["n"] >= step_to_break:
            return o * float("nan")

    mod.register_forward_hook(hook)


def test_nan_loss_stops_naming_step_and_tensor_and_keeps_the_last_checkpoint(tmp_path):
    from bmojo.train import TrainingDiverged

    model, data, _ = _setup()
    _poison_after(model, 7, "layers.0.mlp")
    cfg = TrainConfig(steps=10, batch_size=8, eval_every=0, save_every=3, progress=False)
    with pytest.raises(TrainingDiverged, match=r"step 7: loss is nan; first non-finite tensor: output of "
                                               r"layers\.0\.mlp .*last good checkpoint"):
        train(model, cfg, data, out_dir=tmp_path)
    _, meta = load_checkpoint(tmp_path / "checkpoint")
    assert meta["step"] == 6  # the last good one, untouched


def test_nan_parameter_is_named():
    from bmojo.train.loop import first_nonfinite

    model, data, _ = _setup()
    with torch.no_grad():
        model.layers[0].mixer.o_proj.weight[0, 0] = float("inf")
    assert first_nonfinite(model, *data(0)) == "parameter layers.0.mixer.o_proj.weight"


def test_skip_nonfinite_skips_and_counts(tmp_path):
    model, data, _ = _setup()
    mod = dict(model.named_modules())["layers.0.mlp"]
    bad_steps = {3, 5}
    calls = {"n": 0}

    def hook(m, i, o):
        if m.training:
            calls["n"] += 1
            if calls["n"] in bad_steps:
                return o * float("nan")

    mod.register_forward_hook(hook)
    res = train(model, TrainConfig(steps=8, batch_size=8, eval_every=0, log_every=1, progress=False,
                                   skip_nonfinite=True), data, out_dir=tmp_path)
    assert res.skipped_batches == 2 and res.steps == 8
    assert all(torch.isfinite(p).all() for p in model.parameters())
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "skipped_nonfinite" in r] == [3, 5]


def test_training_interrupted_survives_pickling():
    """A worker process interrupted by Ctrl-C sends this back to its pool: it must unpickle whole."""
    import pickle

    from bmojo.train import TrainingInterrupted

    e = pickle.loads(pickle.dumps(TrainingInterrupted("stopped after step 3", 3, "run/checkpoint")))
    assert isinstance(e, KeyboardInterrupt) and str(e) == "stopped after step 3"
    assert (e.step, e.checkpoint) == (3, "run/checkpoint")


def test_evaluate_counts_accuracy_over_labelled_positions_only():
    """One labelled position per row, answered right: accuracy 1.0 (an evaluate dividing by every position would
    give 1/12), and the loss is over those positions only."""
    import types

    import torch

    from bmojo.train.loop import evaluate

    V = 7

    class Oracle(torch.nn.Module):  # a model that knows the answers: logits only where asked (logits_at)
        def forward(self, inputs, logits_at):
            logits = torch.full((int(logits_at.sum()), V), -20.0)
            logits[torch.arange(logits.shape[0]), inputs[logits_at] % V] = 20.0
            return types.SimpleNamespace(logits=logits)

    inputs = torch.arange(24).view(2, 12)
    labels = torch.full((2, 12), -100)
    labels[0, 5], labels[1, 9] = 5 % V, 21 % V
    res = evaluate(Oracle(), [(inputs, labels)])
    assert res["acc"] == 1.0 and res["n"] == 2 and res["loss"] < 1e-6
    labels[1, 9] = (21 + 1) % V  # one of the two wrong
    assert evaluate(Oracle(), [(inputs, labels)])["acc"] == 0.5


def test_plateau_rule_compares_the_last_quarter_with_what_came_before():
    from bmojo.train.loop import plateaued

    rising = [(s, s / 2000) for s in range(100, 2001, 100)]
    assert not plateaued(rising, 0.01)
    flat_end = [(s, min(s, 1400) / 2000) for s in range(100, 2001, 100)]  # no gain after step 1,400
    assert plateaued(flat_end, 0.01)
    slow = [(s, 0.1 + s * 1e-5) for s in range(100, 2001, 100)]  # +0.005 over the last quarter
    assert plateaued(slow, 0.01) and not plateaued(slow, 0.001)
    assert not plateaued([(100, 0.5)], 0.01)  # nothing before the last quarter yet


def test_training_stops_at_a_plateau_only_after_its_min_steps():
    import torch

    from bmojo.train import TrainConfig, train

    torch.manual_seed(0)
    model = BMojoLM(tiny("transformer", vocab_size=16))
    x = torch.randint(0, 16, (4, 12))
    y = torch.full_like(x, -100)  # nothing to learn from: eval accuracy stays where it is
    batch = lambda step: (x, y.clone().index_fill_(1, torch.tensor([3]), 5))
    cfg = TrainConfig(steps=60, batch_size=4, eval_every=4, lr=1e-9, warmup=0, plateau=0.01, plateau_min_steps=20,
                      progress=False)
    res = train(model, cfg, batch, eval_batches=[batch(0)])
    assert res.stopped_early and res.steps == 20
