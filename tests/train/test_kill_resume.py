"""A training process killed with SIGKILL at a random moment, then resumed, ends with exactly the parameters of an
uninterrupted run; the checkpoint on disk is always a complete one."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import torch

from bmojo.train import load_checkpoint

_RUN = textwrap.dedent("""
    import sys, numpy as np, torch
    from bmojo import BMojoLM
    from bmojo.data.synthetic import batch_stream, make_task
    from bmojo.train import TrainConfig, train
    from tests.helpers import tiny
    torch.set_num_threads(1)
    _, gen = make_task("mqar", vocab_size=32, seq_len=24, num_kv_pairs=3)
    torch.manual_seed(0)
    model = BMojoLM(tiny("bmojo", vocab_size=32, n_layers=1, max_seq_len=32))
    cfg = TrainConfig(steps=int(sys.argv[2]), batch_size=8, eval_every=0, log_every=1, save_every=1, progress=False)
    train(model, cfg, batch_stream(gen, 8, seed=1), out_dir=sys.argv[1], resume=True)
""")


def _run(folder, steps, kill_after=None):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", _RUN, str(folder), str(steps)], env=env)
    if kill_after is None:
        assert p.wait(timeout=300) == 0
        return
    log = folder / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < kill_after):
        time.sleep(0.02)
    time.sleep(np.random.default_rng().uniform(0, 0.05))  # a random moment: inside a step or a checkpoint write
    p.send_signal(signal.SIGKILL)
    p.wait()


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    steps = 60
    _run(tmp_path / "full", steps)
    for k in (5, 25):  # killed twice (after about k steps in all), resumed each time
        _run(tmp_path / "killed", steps, kill_after=k)
        _, meta = load_checkpoint(tmp_path / "killed" / "checkpoint")  # always loadable: never half-written
        assert meta["step"] < steps
    _run(tmp_path / "killed", steps)
    a, ma = load_checkpoint(tmp_path / "full" / "checkpoint")
    b, mb = load_checkpoint(tmp_path / "killed" / "checkpoint")
    assert ma["step"] == mb["step"] == steps
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), f"{n} differs after kill + resume"
