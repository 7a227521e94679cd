"""torchrun data parallelism on this machine (gloo, 2 CPU processes): the same losses as one process with the same
global batch, for DDP and FSDP2; checkpoints written by 2 processes resume in 1 and the reverse."""
import json
import os
import subprocess
import sys

import pytest
import torch

from bmojo.cli.main import main
from bmojo.train import load_checkpoint
from tests.conftest import copy_slice

TINY = ["--model-opt", "n_layers=2", "--model-opt", "n_heads=2", "--model-opt", "window=8", "--model-opt", "chunk=4",
        "--model-opt", "memory_size=4", "--model-opt", "ssm_head_dim=8", "--model-opt", "d_state=4"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    texts = copy_slice(root / "texts")
    assert main(["data", "prepare", "--corpus", str(texts), "--data", str(root / "data")]) == 0
    return texts, root / "data"


MODEL = ["--preset", "bmojo", "--params", "15000", *TINY]


def _train(corpus, out, steps, nproc, *extra, env_extra=None, model=MODEL):
    texts, data = corpus
    args = ["-m", "bmojo", "--threads", "1", "train", *model, "--corpus", str(texts), "--data", str(data),
            "--seq-len", "16", "--steps", str(steps), "--batch-size", "4", "--eval-every", "0",
            "--log-every", "1", "--save-every", "2", "--progress", "false", "--out", str(out), *extra]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    r = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(rows):
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one_with_the_same_global_batch(corpus, tmp_path, mode):
    one = _losses(_train(corpus, tmp_path / "one", 4, 1))
    two = _losses(_train(corpus, tmp_path / "two", 4, 2, "--parallel", mode))
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for k in one:
        assert abs(one[k] - two[k]) <= 1e-5 * max(1.0, abs(one[k])), (k, one[k], two[k])
    a, _ = load_checkpoint(tmp_path / "one" / "checkpoint")
    b, _ = load_checkpoint(tmp_path / "two" / "checkpoint")
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), n


def test_every_large_run_option_combines_under_fsdp(corpus, tmp_path):
    """bf16-mixed, gradient accumulation, activation checkpointing, a compiled forward (AOT autograd backend: inductor
    costs minutes here) and TensorBoard, together, on 2 FSDP processes: the losses of one process with the same
    options, and the events written once."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    opts = ["--precision", "bf16-mixed", "--grad-accum", "2", "--checkpoint-activations", "--compile"]
    env = {"BMOJO_COMPILE_BACKEND": "aot_eager"}
    one = _losses(_train(corpus, tmp_path / "one", 3, 1, *opts, env_extra=env))
    two = _losses(_train(corpus, tmp_path / "two", 3, 2, *opts, "--parallel", "fsdp", "--tensorboard",
                         str(tmp_path / "tb"), env_extra=env))
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for k in one:  # bf16 rounding differs with the rows per matmul
        assert abs(one[k] - two[k]) <= 1e-2 * abs(one[k]), (k, one[k], two[k])
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    assert len(list((tmp_path / "tb").iterdir())) == 1  # rank 0 only


def test_a_run_started_from_a_checkpoint_is_the_same_under_fsdp(corpus, tmp_path):
    """`--init` on 2 FSDP processes: every process starts from the checkpoint's weights (the losses of 1 process)."""
    _train(corpus, tmp_path / "base", 2, 1)
    init = ["--init", str(tmp_path / "base" / "checkpoint")]
    one = _losses(_train(corpus, tmp_path / "one", 2, 1, model=init))
    two = _losses(_train(corpus, tmp_path / "two", 2, 2, "--parallel", "fsdp", model=init))
    fresh = _losses(_train(corpus, tmp_path / "fresh", 2, 1))
    assert sorted(one) == sorted(two) == [1, 2]
    for k in one:
        assert abs(one[k] - two[k]) <= 1e-5 * max(1.0, abs(one[k])), (k, one[k], two[k])
    assert one[1] < fresh[1] - 1e-3  # it starts where the base run ended, not from a new model


def test_checkpoints_move_between_process_counts(corpus, tmp_path):
    """2 processes write, 1 resumes; 1 writes, 2 resume: both end where an uninterrupted 1-process run ends."""
    ref = _losses(_train(corpus, tmp_path / "ref", 6, 1))
    _train(corpus, tmp_path / "a", 4, 2)
    a = _losses(_train(corpus, tmp_path / "a", 6, 1, "--resume"))
    _train(corpus, tmp_path / "b", 4, 1)
    b = _losses(_train(corpus, tmp_path / "b", 6, 2, "--resume", "--parallel", "fsdp"))
    for k in (5, 6):
        assert abs(a[k] - ref[k]) <= 1e-5 * max(1.0, ref[k]) and abs(b[k] - ref[k]) <= 1e-5 * max(1.0, ref[k])


def test_global_batch_must_split_evenly(corpus, tmp_path):
    texts, data = corpus
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "bmojo", "train", "--corpus", str(texts), "--data", str(data), "--seq-len", "16",
                        "--params", "15000", "--steps", "1", "--batch-size", "3", "--out", str(tmp_path / "x"), *TINY],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "batch_size=3: must be a multiple of the 2 processes" in r.stderr
