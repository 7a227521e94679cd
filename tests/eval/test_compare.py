"""`bmojo compare` end to end in seconds on a tiny setting: table, results.json, PNG, ablation rows,
length factors, and clear errors for bad options."""
import json

import pytest

from bmojo import preset
from bmojo.cli.main import main


def test_tiny_compare_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--presets", "swa,bmojo", "--selectors", "random", "--memory-sizes", "2",
               "--steps", "3", "--batch-size", "4", "--params", "20000", "--eval-examples", "8",
               "--sweep", "1e-3,3e-3", "--workers", "1", "--length-factors", "2",
               "--vocab-size", "32", "--seq-len", "24", "--num-kv-pairs", "3", "--query-start", "12",
               "--model-opt", "window=4", "--model-opt", "chunk=4", "--model-opt", "memory_size=4",
               "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    labels = [r["label"] for r in res["best"]]
    assert labels == ["swa", "bmojo", "bmojo[random]", "bmojo[M=2]"]
    assert len(res["all_runs"]) == 8  # 4 models x 2 learning rates
    for r in res["best"]:
        assert r["steps"] == 3 and r["state_bytes"] > 0 and r["lr"] in (1e-3, 3e-3)
        assert r["acc"] == max(a["acc"] for a in res["all_runs"] if a["label"] == r["label"])  # its best lr
    # the accuracy reported is the saved model's on the held-out sequences (re-evaluated here from the checkpoint)
    from bmojo.eval.compare import _eval_batches
    from bmojo.train import evaluate, load_checkpoint

    spec = res["spec"]
    for r in res["all_runs"]:
        model, _ = load_checkpoint(out / "runs" / f"{r['label'].replace('[', '_').replace(']', '_')}-lr{r['lr']:g}"
                                   / "checkpoint")
        assert evaluate(model, _eval_batches("mqar", spec["task_options"], 8, 0))["acc"] == r["acc"], r["label"]
    by = {r["label"]: r for r in res["best"]}
    assert by["bmojo[random]"]["model"]["selector"] == "random" and by["bmojo[M=2]"]["model"]["memory_size"] == 2
    assert by["bmojo"]["model"]["window"] == 4
    assert by["bmojo[M=2]"]["state_bytes"] < by["bmojo"]["state_bytes"]
    for r in res["best"]:  # bounded decode states: the same bytes at twice the training length
        assert r["state_bytes_x2"] == r["state_bytes"]
    assert (out / "results.png").stat().st_size > 1000
    table = capsys.readouterr().out
    assert "state bytes" in table and "bmojo[M=2]" in table
    # the same command again: refused before any training, the comparison untouched; --overwrite replaces it
    before = (out / "results.json").read_bytes()
    again = ["compare", "--presets", "swa", "--steps", "2", "--batch-size", "4", "--params", "20000",
             "--eval-examples", "8", "--workers", "1", "--vocab-size", "32", "--seq-len", "24", "--num-kv-pairs", "3",
             "--query-start", "12",
             "--model-opt", "window=4", "--model-opt", "chunk=4", "--out", str(out)]
    assert main(again) == 2
    assert "already holds a comparison" in capsys.readouterr().err and (out / "results.json").read_bytes() == before
    assert main(again + ["--overwrite"]) == 0
    assert [r["label"] for r in json.loads((out / "results.json").read_text())["best"]] == ["swa"]


@pytest.mark.parametrize("argv,match", [
    (["--num-kv-pairs", "40"], "more pairs than fit"),
    (["--vocab-size", "10", "--num-kv-pairs", "8", "--seq-len", "64"], "vocab_size.*too small"),
    (["--presets", "gpt"], "unknown.*gpt"),
    (["--model-opt", "windw=3"], "expected FIELD=VALUE"),
    (["--digits", "3"], "no option.*--digits"),
    (["--model-opt", "window=4"], r"run \w+: ModelConfig.chunk=8"),  # checked before any training
])
def test_compare_bad_options(argv, match, tmp_path, capsys):
    rc = main(["compare", "--out", str(tmp_path / "cmp")] + argv)
    assert rc == 2 and not (tmp_path / "cmp").exists()
    assert __import__("re").search(match, capsys.readouterr().err)


def test_default_spec_trains_bmojo_with_the_learned_selection():
    """The main job: bmojo runs the preset bmojo-recall (its pool = the task's seq_len), the other presets as defined,
    lengths 1x/4x/16x; a --model-opt beats the recipe; --paper-bmojo trains the preset as the paper defines it."""
    import argparse

    from bmojo.cli import compare as cmp

    def spec(*argv):
        p = argparse.ArgumentParser()
        cmp.add_parser(p.add_subparsers())
        return cmp.build_spec(p.parse_args(["compare", *argv]))
    s = spec()
    runs = {r.label: r for r in s.runs}
    assert list(runs) == cmp.ALL and s.length_factors == (4, 16)
    assert (runs["bmojo"].preset, runs["bmojo"].model) == ("bmojo-recall", {"train_memory_size": 64})
    recall = preset("bmojo-recall")
    assert recall.selection_gate and recall.gate_read == "logit" and not recall.ssm_residual
    assert (recall.gate_input, recall.memory_rope, s.model["memory_size"]) == ("conv", "edge", 32)
    assert all(not runs[p].model and runs[p].preset == p for p in cmp.ALL if p != "bmojo")
    assert spec("--seq-len", "128").runs[-1].model["train_memory_size"] == 128
    assert spec("--model-opt", "gate_penalty=0").runs[-1].model["gate_penalty"] == 0
    paper = spec("--paper-bmojo").runs[-1]
    assert (paper.preset, paper.model) == ("bmojo-paper", {})
    assert not preset(paper.preset, **paper.model).ssm_residual
    front = [r.label for r in spec("--frontier").runs]
    assert {"bmojo[M=4]", "swa[W=32]", "mamba[N=64]"} <= set(front)


def test_running_runs_show_their_progress(tmp_path):
    """What `bmojo compare` prints while its runs train: a line per started, unfinished run."""
    from bmojo.eval.jobs import running_lines

    a, b, c = tmp_path / "bmojo-lr0.006", tmp_path / "swa-lr0.006", tmp_path / "mamba-lr0.006"
    for f in (a, b, c):
        f.mkdir()
    rows = [{"step": 100, "steps": 400, "loss": 2.5, "acc": 0.25, "elapsed_s": 30.0},
            {"step": 100, "eval_acc": 0.5, "eval_loss": 1.0}]
    (a / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 11')  # half a line
    (b / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (b / "checkpoint").mkdir()  # finished
    assert running_lines([a, b, c]) == ["bmojo-lr0.006: step 100/400, loss 2.500, acc 0.250, eval_acc 0.500, "
                                        "~1.5 min left"]


def test_ctrl_c_stops_a_comparison_with_one_line_and_exit_130(tmp_path):
    """Ctrl-C to the whole process group (as a terminal sends it): the workers leave it to the parent, which
    stops the pool and exits 130 with one line, no traceback and no hang."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "cmp"
    argv = [sys.executable, "-m", "bmojo", "compare", "--presets", "swa,bmojo", "--steps", "100000", "--batch-size",
            "4", "--params", "20000", "--eval-examples", "8", "--workers", "2", "--vocab-size", "32", "--seq-len",
            "24", "--num-kv-pairs", "3", "--query-start", "12", "--model-opt", "window=4", "--model-opt", "chunk=4",
            "--target-acc", "1.0", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120  # until both runs are training
    while time.time() < deadline and len(list(out.glob("runs/*/metrics.jsonl"))) < 2:
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError("the comparison hung after Ctrl-C")
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "bmojo compare: interrupted"


def test_best_rows_take_the_median_over_seeds_and_keep_the_min(tmp_path):
    from bmojo.eval.compare import best_rows, format_table

    def row(label, lr, seed, acc, x4):
        return {"label": label, "preset": label, "lr": lr, "seed": seed, "params": 10, "state_bytes": 100, "acc": acc,
                "acc_x4": x4, "state_bytes_x4": 100, "steps": 10 * (seed + 1), "train_seconds": 1.0,
                "stopped_early": False, "curve": [[10, acc]]}
    rows = [row("a", 1e-3, s, acc, acc / 2) for s, acc in enumerate([0.2, 0.9, 0.5])]
    rows += [row("a", 3e-3, s, acc, acc) for s, acc in enumerate([0.95, 0.1, 0.3])]  # a better max, a worse median
    (best,) = best_rows(rows, ["a"], factors=(4,))
    assert best["lr"] == 1e-3 and best["acc"] == 0.5 and best["acc_min"] == 0.2
    assert best["acc_seeds"] == [0.2, 0.9, 0.5] and best["acc_x4"] == 0.25 and best["acc_x4_min"] == 0.1
    assert [s["seed"] for s in best["seeds"]] == [0, 1, 2] and best["steps"] == 20
    assert "0.500 (0.200)" in format_table([best], (4,))
    pytest.importorskip("matplotlib")
    from bmojo.eval.compare import plot  # the median rows (with acc_x4_min, acc_x4_seeds beside acc_x4) plot
    assert plot([best], tmp_path / "results.png", "seeds").stat().st_size > 0
    (one,) = best_rows([row("b", 1e-3, 0, 0.4, 0.1)], ["b"], factors=(4,))
    assert one["acc"] == 0.4 and "acc_min" not in one  # one seed: the run's own row
