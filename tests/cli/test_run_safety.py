"""Run folders cannot be damaged: a run is never replaced without --overwrite; --resume takes the run's options
from its checkpoint, refuses a folder without one, leaves a finished run as it is, and logs each step once;
Ctrl-C stops at a step boundary with a checkpoint, one line and exit 130."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from bmojo.cli.main import main
from bmojo.train import load_checkpoint

TINY = ["--params", "15000", "--seq-len", "16", "--model-opt", "n_layers=1", "--model-opt", "n_heads=2",
        "--model-opt", "window=8", "--model-opt", "chunk=4", "--model-opt", "memory_size=4",
        "--model-opt", "ssm_head_dim=8", "--model-opt", "d_state=4"]


def _args(tmp_path, texts, *extra, out="run"):
    return ["train", "--corpus", str(texts), "--data", str(tmp_path / "data"), "--batch-size", "2",
            "--eval-batches", "1", "--eval-every", "0", "--log-every", "1", "--progress", "false",
            "--out", str(tmp_path / out), *TINY, *extra]


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _steps(folder):
    return [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_run_folder_is_not_replaced_without_overwrite(tmp_path, texts, capsys):
    assert main(_args(tmp_path, texts, "--steps", "3")) == 0
    run = tmp_path / "run"
    before = _files(run)
    capsys.readouterr()
    assert main(_args(tmp_path, texts, "--steps", "3", "--model-opt", "memory_size=2")) == 2
    err = capsys.readouterr().err
    assert "already holds a run (checkpoint at step 3)" in err and "--resume" in err and "--overwrite" in err
    assert _files(run) == before  # nothing touched: checkpoint, metrics and result
    assert main(_args(tmp_path, texts, "--steps", "2", "--overwrite")) == 0
    assert _steps(run) == [1, 2]  # the old run's rows are gone, not mixed in
    assert load_checkpoint(run / "checkpoint")[1]["step"] == 2


def test_resume_takes_the_options_from_the_checkpoint_and_logs_each_step_once(tmp_path, texts, monkeypatch, capsys):
    assert main(_args(tmp_path, texts, "--steps", "6", "--save-every", "2")) == 0
    full = load_checkpoint(tmp_path / "run" / "checkpoint")[0]
    from bmojo.train import lm

    real = lm.packed_batches

    def dies_at_step_3(*a):  # the same data, but the run dies in its fourth step (after logging step 3)
        fn = real(*a)
        return lambda step: (_ for _ in ()).throw(KeyboardInterrupt) if step == 3 else fn(step)

    with monkeypatch.context() as m:
        m.setattr(lm, "packed_batches", dies_at_step_3)
        assert main(_args(tmp_path, texts, "--steps", "6", "--save-every", "2", out="part")) == 130
    part = tmp_path / "part"
    assert "the last checkpoint is" in capsys.readouterr().err
    assert _steps(part) == [1, 2, 3] and load_checkpoint(part / "checkpoint")[1]["step"] == 2
    # only --out: every other option (model, batch size, steps, save-every...) comes from the checkpoint
    assert main(["train", "--resume", "--out", str(part), "--progress", "false"]) == 0
    assert _steps(part) == [1, 2, 3, 4, 5, 6]
    resumed = load_checkpoint(part / "checkpoint")[0]
    for (n, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n


def test_resume_drops_the_log_rows_past_the_checkpoint(tmp_path, texts):
    assert main(_args(tmp_path, texts, "--steps", "4", "--save-every", "2")) == 0
    run = tmp_path / "run"
    # as if the run had died after logging step 5 with its last checkpoint at step 4
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 5, "loss": 9.9}) + "\n")
    assert main(["train", "--resume", "--out", str(run), "--steps", "6", "--progress", "false"]) == 0
    assert _steps(run) == [1, 2, 3, 4, 5, 6]
    assert all(r.get("loss") != 9.9 for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()))


def test_resume_on_a_finished_run_changes_nothing(tmp_path, texts, capsys):
    assert main(_args(tmp_path, texts, "--steps", "3")) == 0
    run = tmp_path / "run"
    before = _files(run)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--progress", "false"]) == 0
    assert "already finished at step 3" in capsys.readouterr().out
    assert _files(run) == before
    assert main(["train", "--resume", "--out", str(run), "--steps", "2"]) == 2  # steps may only grow
    assert "at step 3, past steps=2" in capsys.readouterr().err
    assert _files(run) == before


def test_resume_refusals_name_the_problem(tmp_path, texts, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", "--out", str(tmp_path / "empty")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    assert main(["train", "--resume"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(_args(tmp_path, texts, "--steps", "2")) == 0
    run = tmp_path / "run"
    before = _files(run)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--steps", "4", "--lr", "0.1", "--seq-len", "32"]) == 2
    err = capsys.readouterr().err
    assert "--seq-len 32 (the run's: 16)" in err and "--lr 0.1 (the run's: 0.003)" in err
    assert main(["train", "--resume", "--overwrite", "--out", str(run)]) == 2
    assert "choose one" in capsys.readouterr().err
    assert _files(run) == before


_CMD = [sys.executable, "-m", "bmojo", "--threads", "1"]


def test_ctrl_c_saves_a_checkpoint_and_names_the_resume_command(tmp_path, texts):
    args = _args(tmp_path, texts, "--steps", "100000")[1:]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    # as from a terminal: Ctrl-C not ignored (a test runner started in the background passes SIGINT ignored)
    p = subprocess.Popen(_CMD + ["train", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert "interrupted: stopped after step" in last and f"bmojo train --resume --out {tmp_path / 'run'}" in last
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoint")
    steps = _steps(tmp_path / "run")
    assert meta["step"] == steps[-1] >= 3 and steps == list(range(1, steps[-1] + 1))
    assert f"step {meta['step']})" in last
