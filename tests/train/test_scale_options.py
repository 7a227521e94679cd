"""The training options for larger runs: bf16-mixed precision, gradient accumulation, activation checkpointing,
torch.compile of the training forward and TensorBoard tracking.  Each is tied to the plain fp32 loop."""
import json

import pytest
import torch

from bmojo import BMojoLM
from bmojo.config import ConfigError
from bmojo.data.text import encode_bytes, random_windows, zen_of_python
from bmojo.train import TrainConfig, train
from tests.helpers import tiny

PRESETS = ["transformer", "mamba", "hybrid", "bmojo-f", "bmojo"]
ZEN = encode_bytes(zen_of_python())


def _zen_batches(batch=8, length=32):
    def batch_fn(step):
        return random_windows(ZEN, batch, length, torch.Generator().manual_seed(step))
    return batch_fn


def _run(name, steps, n_layers=2, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    model = BMojoLM(tiny(name, vocab_size=256, n_layers=n_layers, max_seq_len=64)).to(dtype)
    res = train(model, TrainConfig(steps=steps, batch_size=8, warmup=0, eval_every=0, log_every=1, progress=False,
                                   **kw), _zen_batches())
    return model, res


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("name", ["transformer", "mamba", "bmojo"])
def test_grad_accum_is_the_whole_batch(name):
    """In float64, so that the sum's order (a rounding of ~1e-7 in float32, which AdamW's normalisation can grow to
    ~1e-5 in a weight whose gradient is near 0, depending on the CPU's kernels) cannot hide a real difference."""
    whole, r1 = _run(name, 5, dtype=torch.float64)
    parts, r4 = _run(name, 5, dtype=torch.float64, grad_accum=4)
    assert abs(r1.history[-1]["loss"] - r4.history[-1]["loss"]) <= 1e-5
    assert (_weights(whole) - _weights(parts)).abs().max() <= 1e-5
    assert r4.history[-1]["tokens_per_s"] > 0 and r4.history[-1]["grad_norm"] > 0


def test_grad_accum_must_divide_the_batch():
    with pytest.raises(ConfigError, match="grad_accum=3: must divide batch_size=8"):
        TrainConfig(batch_size=8, grad_accum=3)
    with pytest.raises(ConfigError, match="precision='bf16'"):
        TrainConfig(precision="bf16")


def test_bf16_mixed_trains_in_bf16_and_matches_fp32_loss():
    model, _ = _run("bmojo", 1, precision="bf16-mixed")
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", torch.bfloat16):
        model(ZEN[None, :32])
    hook.remove()
    assert seen == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    _, fp32 = _run("bmojo", 200, n_layers=1)
    _, bf16 = _run("bmojo", 200, n_layers=1, precision="bf16-mixed")
    a = sum(r["loss"] for r in fp32.history[-20:]) / 20
    b = sum(r["loss"] for r in bf16.history[-20:]) / 20
    assert a < 0.8 * fp32.history[0]["loss"], "the run did not learn, so the comparison says nothing"
    assert abs(a - b) <= 0.02 * a, (a, b)


def test_bf16_mixed_changes_the_numbers():
    """A flag that silently did nothing would give fp32's weights exactly."""
    m32, _ = _run("bmojo", 2)
    m16, _ = _run("bmojo", 2, precision="bf16-mixed")
    assert (_weights(m32) - _weights(m16)).abs().max() > 0


@pytest.mark.parametrize("name", ["transformer", "bmojo"])
def test_checkpoint_activations_recomputes_blocks_and_changes_nothing(name):
    plain, _ = _run(name, 3)
    torch.manual_seed(0)
    model = BMojoLM(tiny(name, vocab_size=256, n_layers=2, max_seq_len=64))
    calls = []
    model.layers[0].register_forward_pre_hook(lambda m, i: calls.append(1))  # recomputation may stop early
    train(model, TrainConfig(steps=3, batch_size=8, warmup=0, eval_every=0, progress=False,
                             checkpoint_activations=True), _zen_batches())
    assert len(calls) == 6  # each step runs block 0 twice: the forward and its recomputation in the backward
    assert torch.equal(_weights(plain), _weights(model))


@pytest.mark.parametrize("name", PRESETS)
def test_the_training_forward_compiles_as_one_graph(name):
    torch._dynamo.reset()
    model = BMojoLM(tiny(name, vocab_size=256, n_layers=2, max_seq_len=64))
    explained = torch._dynamo.explain(model)(ZEN[None, :40].repeat(2, 1))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_compiled_step_equals_eager(monkeypatch):
    """The loop's compiled path, captured by dynamo and differentiated by AOT autograd (inductor's code generation
    costs minutes on 2 cores; `benchmarks/train_options.py` runs it and checks the loss there too)."""
    torch._dynamo.reset()
    calls, compile_ = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda m: calls.append(m) or compile_(m, backend="aot_eager",
                                                                                fullgraph=True))
    eager, re = _run("bmojo", 1)
    compiled, rc = _run("bmojo", 1, compile=True)
    assert len(calls) == 1
    assert abs(re.history[0]["loss"] - rc.history[0]["loss"]) <= 1e-4
    assert (_weights(eager) - _weights(compiled)).abs().max() <= 1e-4


def test_tensorboard_events_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model = BMojoLM(tiny("bmojo", vocab_size=256, n_layers=1, max_seq_len=64))
    ZEN_EVAL = [random_windows(ZEN, 8, 32, torch.Generator().manual_seed(99))]
    train(model, TrainConfig(steps=6, batch_size=8, eval_every=3, log_every=2, progress=False,
                             tensorboard=str(tmp_path / "tb")), _zen_batches(), eval_batches=ZEN_EVAL,
          out_dir=tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/ppl", "train/lr", "train/tokens_per_s", "train/grad_norm", "eval/loss",
            "eval/ppl"} <= tags
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in rows if "loss" in r}
    events = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert sorted(events) == sorted(logged) == [2, 4, 6]
    assert all(abs(events[s] - logged[s]["loss"]) <= 1e-6 * abs(logged[s]["loss"]) for s in events)
    assert [e.step for e in acc.Scalars("eval/ppl")] == [3, 6]


def test_train_cli_takes_the_flags(tmp_path):
    from bmojo.cli.main import build_parser
    from bmojo.cli.common import dataclass_from_args

    args = build_parser().parse_args(["train", "--compile", "--checkpoint-activations", "false", "--grad-accum",
                                      "4", "--precision", "bf16-mixed", "--tensorboard", str(tmp_path)])
    cfg = dataclass_from_args(TrainConfig, args)
    assert (cfg.compile, cfg.checkpoint_activations, cfg.grad_accum, cfg.precision, cfg.tensorboard) == \
        (True, False, 4, "bf16-mixed", str(tmp_path))
