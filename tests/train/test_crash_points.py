"""Crashes at fixed points, every point every run: a training process ends (os._exit, as a kill would) at each
point of its second checkpoint write, after each file and around each rename; the checkpoint left is always a
complete one and the resumed run ends with exactly the parameters of an uninterrupted one.  The store's writer
ends between a write's data and its commit; the reopened store drops that write, reports it, and keeps every
committed entry."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bmojo.train.checkpoint import CRASH_POINTS, load_checkpoint

POINTS = list(CRASH_POINTS) + ["file:note.txt"]


def run(folder, steps: int, point: str | None = None) -> None:
    """4..steps steps of a tiny B'MOJO on MQAR, checkpointing every 2 (resuming from `folder`); with `point`, the
    process ends there during its second checkpoint write (the one of step 4)."""
    from bmojo import BMojoLM
    from bmojo.data.synthetic import batch_stream, make_task
    from bmojo.train import TrainConfig, checkpoint, train
    from tests.helpers import tiny

    torch.set_num_threads(1)
    _, gen = make_task("mqar", vocab_size=32, seq_len=24, num_kv_pairs=3)
    torch.manual_seed(0)
    model = BMojoLM(tiny("bmojo", vocab_size=32, n_layers=1, max_seq_len=32))
    saves = []

    def hook(p):
        if p == "model":  # every write starts with the weights: count the writes
            saves.append(p)
        if p == point and len(saves) == 2:
            os._exit(86)

    checkpoint.crash_hook = hook if point else None
    cfg = TrainConfig(steps=steps, batch_size=8, eval_every=0, log_every=1, save_every=2, progress=False)
    try:
        train(model, cfg, batch_stream(gen, 8, seed=1), out_dir=folder, resume=True, files={"note.txt": "x"})
    finally:
        checkpoint.crash_hook = None


def _in_subprocess(folder, steps, point):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    code = f"from tests.train.test_crash_points import run; run({str(folder)!r}, {steps}, {point!r})"
    return subprocess.run([sys.executable, "-c", code], env=env, timeout=300).returncode


def _here(folder, steps):
    """run() in this process, on one thread as in the subprocess (so the numbers are bit-comparable)."""
    threads = torch.get_num_threads()
    try:
        run(folder, steps)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    _here(folder, 6)
    return load_checkpoint(folder / "checkpoint")[0]


@pytest.mark.parametrize("point", POINTS)
def test_a_crash_at_each_point_of_a_checkpoint_write_resumes_exactly(tmp_path, point, uninterrupted):
    assert _in_subprocess(tmp_path, 6, point) == 86  # it died at the point, during the step-4 write
    _, meta = load_checkpoint(tmp_path / "checkpoint")  # always a complete checkpoint
    assert meta["step"] == (4 if point == "renamed" else 2)
    _here(tmp_path, 6)  # resumed from it
    resumed, meta = load_checkpoint(tmp_path / "checkpoint")
    assert meta["step"] == 6
    for (n, a), b in zip(uninterrupted.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), f"{n} differs after a crash at {point}"
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # each step logged once
    assert not (tmp_path / ".checkpoint.tmp").exists() and not (tmp_path / ".checkpoint.old").exists()


_STORE_WRITER = """
import os, sys, torch
import bmojo.memory.store as store_mod
from bmojo.memory import Store, StoreConfig
from bmojo.memory.disk import make_spec
writes = []
def hook(point):
    writes.append(point)
    if len(writes) == 4:  # the fourth write: its data is in the file, its commit is not
        os._exit(86)
store_mod.crash_hook = hook
s = Store.open(sys.argv[1], make_spec("x", {0: (2, 8)}, rows=1), StoreConfig(durable=True))
for c in range(10):
    g = torch.Generator().manual_seed(c)
    s.layer(0).add(0, torch.arange(3) + 10 * c, torch.randn(3, 2, 8, generator=g), torch.randn(3, 2, 8, generator=g))
    s.flush()
"""


def test_a_store_writer_ended_between_data_and_commit_reopens_without_that_write(tmp_path):
    from bmojo.memory import Store
    from bmojo.memory.disk import make_spec

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    rc = subprocess.run([sys.executable, "-c", _STORE_WRITER, str(tmp_path / "s")], env=env, timeout=300).returncode
    assert rc == 86
    with Store.open(tmp_path / "s", make_spec("x", {0: (2, 8)}, rows=1)) as s:
        (r,) = s.recovered
        assert r["file"] == "layer0.bin" and r["dropped_entries"] == 3 and "in flight" in r["reason"]
        ls = s.layer(0)
        assert len(ls) == 9  # three committed writes of three entries
        recs = np.fromfile(ls.path, dtype=ls.rec)
        for c in range(3):
            g = torch.Generator().manual_seed(c)
            k, v = torch.randn(3, 2, 8, generator=g), torch.randn(3, 2, 8, generator=g)
            assert np.array_equal(recs["k"][3 * c:3 * c + 3], k.numpy())
            assert np.array_equal(recs["v"][3 * c:3 * c + 3], v.numpy())
