"""Faults a new user hit where data was lost or a result was silently wrong; each test failed before its fix."""
import json

import pytest

from bmojo.cli.main import main

TINY = ["--params", "15000", "--seq-len", "16", "--model-opt", "n_layers=1", "--model-opt", "n_heads=2",
        "--model-opt", "window=8", "--model-opt", "chunk=4", "--model-opt", "memory_size=4",
        "--model-opt", "ssm_head_dim=8", "--model-opt", "d_state=4"]


def _train(tmp_path, corpus, out="run", *extra):
    return main(["train", "--corpus", str(corpus), "--data", str(tmp_path / "data"), "--steps", "2", "--batch-size",
                 "2", "--eval-batches", "1", "--progress", "false", "--out", str(tmp_path / out), *TINY, *extra])


def _prepared(tmp_path):
    return sorted(p for p in (tmp_path / "data").glob("*/*") if (p / "manifest.json").is_file())


# 1. a prepared corpus never changes under a run
def test_another_seed_or_content_gives_another_corpus_folder(tmp_path, texts):
    data = ["--data", str(tmp_path / "data")]
    assert main(["data", "prepare", "--corpus", str(texts), *data]) == 0
    first = _prepared(tmp_path)
    assert len(first) == 1
    manifest = (first[0] / "manifest.json").read_bytes()
    assert main(["data", "prepare", "--corpus", str(texts), *data]) == 0  # the same corpus: reused
    assert _prepared(tmp_path) == first
    assert main(["data", "prepare", "--corpus", str(texts), "--seed", "1", *data]) == 0
    (texts / "new.txt").write_text("another document. " * 40)
    assert main(["data", "prepare", "--corpus", str(texts), *data]) == 0
    assert len(_prepared(tmp_path)) == 3  # another seed, another content: two more folders
    assert (first[0] / "manifest.json").read_bytes() == manifest  # the first one untouched


def test_resume_and_eval_refuse_a_corpus_whose_tokens_changed(tmp_path, texts, capsys):
    assert _train(tmp_path, texts) == 0
    folder, = _prepared(tmp_path)
    m = json.loads((folder / "manifest.json").read_text())  # the corpus rewritten in place (an older bmojo did)
    m["splits"]["val"]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert _train(tmp_path, texts, "run", "--resume", "--steps", "4") == 2
    err = capsys.readouterr().err
    assert "digest" in err and "changed" in err
    ck = tmp_path / "run" / "checkpoint"
    assert json.loads((ck / "config.json").read_text())["step"] == 2  # nothing trained on
    assert main(["eval", "ppl", "--checkpoint", str(ck)]) == 2
    err = capsys.readouterr().err
    recorded = json.loads((ck / "config.json").read_text())["corpus"]["digest"]
    assert recorded in err and "digest" in err


def _lm_checkpoint(folder, seed=0, **kw):
    import torch

    from bmojo.data.text.tokenizer import ByteTokenizer
    from bmojo.models import BMojoLM
    from bmojo.train.checkpoint import save_checkpoint
    from tests.helpers import tiny

    torch.manual_seed(seed)
    m = BMojoLM(tiny("bmojo", vocab_size=256, **kw))
    save_checkpoint(folder, m, {"model": m.cfg.to_dict(), "tokenizer": ByteTokenizer().to_dict()}, files={})
    return folder


def _gen(ck, store, prompt="hello there, this is a long enough prompt", n="20"):
    return ["generate", "--checkpoint", str(ck), "--max-new-tokens", n, "--temperature", "0", "--storage", str(store),
            "--prompt", prompt]


# 2. clearing a store deletes only the store's files
def test_memory_clear_and_overwrite_storage_keep_the_users_files(tmp_path, capsys):
    ck, mem = _lm_checkpoint(tmp_path / "ck"), tmp_path / "mem"
    assert main(_gen(ck, mem)) == 0
    (mem / "notes.txt").write_text("mine")
    (mem / "sub").mkdir()
    (mem / "sub" / "data.txt").write_text("also mine")
    assert main(["memory", "clear", str(mem)]) == 0
    assert sorted(p.name for p in mem.iterdir()) == ["notes.txt", "sub"]
    assert (mem / "sub" / "data.txt").read_text() == "also mine" and "notes.txt" in capsys.readouterr().out
    assert main(_gen(ck, tmp_path / "mem2")) == 0
    (tmp_path / "mem2" / "notes.txt").write_text("mine")
    ppl = ["eval", "ppl", "--checkpoint", str(ck), "--storage", str(tmp_path / "mem2"), "--overwrite-storage"]
    assert main(ppl) == 2  # eval ppl replaces its store per window: it refuses a folder holding the user's files
    assert "notes.txt" in capsys.readouterr().err and (tmp_path / "mem2" / "notes.txt").read_text() == "mine"


def test_a_store_with_a_damaged_store_json_can_be_cleared(tmp_path):
    ck, mem = _lm_checkpoint(tmp_path / "ck"), tmp_path / "mem"
    assert main(_gen(ck, mem)) == 0
    (mem / "store.json").write_text((mem / "store.json").read_text()[:10])
    assert main(["memory", "clear", str(mem)]) == 0 and not mem.exists()


# 3. damaged weights are an error naming the file
def test_a_flipped_weight_byte_is_an_error_naming_the_file(tmp_path, texts, capsys):
    assert _train(tmp_path, texts) == 0
    ck = tmp_path / "run" / "checkpoint"
    f = ck / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x7F  # the high byte of the last float32
    f.write_bytes(bytes(data))
    capsys.readouterr()
    for argv in (["eval", "ppl", "--checkpoint", str(ck)], ["generate", "--checkpoint", str(ck), "--prompt", "x"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "model.safetensors" in err and "SHA-256" in err
    assert _train(tmp_path, texts, "run", "--resume", "--steps", "4") == 2
    assert "model.safetensors" in capsys.readouterr().err
    assert json.loads((ck / "config.json").read_text())["step"] == 2


# 4. a session continues only under the weights that wrote it
def test_a_session_is_tied_to_the_weights_not_only_the_config(tmp_path, capsys):
    a, b, mem = _lm_checkpoint(tmp_path / "a", seed=0), _lm_checkpoint(tmp_path / "b", seed=1), tmp_path / "mem"
    assert main(_gen(a, mem)) == 0
    before = {p.name: p.read_bytes() for p in mem.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(_gen(b, mem, "more")) == 2  # the same config, other weights
    assert "weights" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in mem.iterdir() if p.is_file()} == before  # nothing touched
    assert main(_gen(a, mem, "more")) == 0


# 5. Ctrl-C saves the session; after SIGKILL the next call says what it kept and dropped
def _popen(argv):
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bmojo", "--threads", "1", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_output(p, chars=40, timeout=120):
    import os
    import time

    fd = p.stdout.fileno()
    os.set_blocking(fd, False)
    got, deadline = b"", time.time() + timeout
    while len(got) < chars and time.time() < deadline and p.poll() is None:
        try:
            got += os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.05)
    return got


def test_ctrl_c_during_generate_saves_the_session(tmp_path):
    import signal

    from bmojo.memory import describe

    ck, mem = _lm_checkpoint(tmp_path / "ck"), tmp_path / "mem"
    p = _popen(_gen(ck, mem, "x" * 20, n="100000"))
    _wait_for_output(p, 60)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    err = err.decode()
    assert p.returncode == 130, err
    assert "Traceback" not in err and "session is saved" in err
    assert describe(mem)["has_session"]


def test_after_sigkill_generate_reports_what_it_dropped(tmp_path, capsys):
    import signal

    ck, mem = _lm_checkpoint(tmp_path / "ck"), tmp_path / "mem"
    assert main(_gen(ck, mem)) == 0
    p = _popen(_gen(ck, mem, "y" * 40, n="100000"))  # writes entries past the saved session, then dies
    _wait_for_output(p, 100)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    capsys.readouterr()
    assert main(_gen(ck, mem, "z")) == 0
    err = capsys.readouterr().err
    assert "did not finish" in err and "kept in" in err and "continuing the session" in err


# 6. a damaged store is reported by memory info, and opening it keeps every intact record
def test_memory_info_reports_damage_and_an_open_keeps_intact_records(tmp_path, capsys):
    from bmojo.memory import describe

    ck, mem = _lm_checkpoint(tmp_path / "ck"), tmp_path / "mem"
    assert main(_gen(ck, mem, "a long prompt " * 20)) == 0
    n0 = describe(mem)["entries"]
    layer = mem / f"layer{next(iter(n0))}.bin"
    size = layer.stat().st_size // n0[next(iter(n0))]
    data = bytearray(layer.read_bytes())
    data[size * 3 + 20] ^= 1  # one byte of record 3
    layer.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["memory", "info", str(mem)]) == 1
    out = capsys.readouterr()
    assert "DAMAGED" in out.out and layer.name in out.out
    assert layer.read_bytes() == bytes(data)  # info changed nothing
    assert main(_gen(ck, mem, "more")) == 0
    kept = describe(mem)["entries"][next(iter(n0))]
    assert kept >= n0[next(iter(n0))] - 1  # only the bad record went (and the call added its own)
    assert any((mem / "dropped").rglob("*.corrupt"))


# 7. train --overwrite leaves nothing of the old run's results
def test_train_overwrite_removes_the_old_runs_eval_and_inspect(tmp_path, texts):
    assert _train(tmp_path, texts) == 0
    run = tmp_path / "run"
    assert main(["eval", "ppl", "--checkpoint", str(run / "checkpoint"), "--factors", "1"]) == 0
    (run / "inspect").mkdir()
    (run / "inspect" / "inspect.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    assert (run / "eval" / "eval.json").is_file()
    assert _train(tmp_path, texts, "run", "--overwrite") == 0
    assert not (run / "eval").exists() and not (run / "inspect").exists()
    assert (run / "notes.txt").read_text() == "mine"


# 8 and 9: options that were ignored, or that ended in a traceback, are one line and exit 2 before any work
@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    from tests.conftest import copy_slice

    root = tmp_path_factory.mktemp("lmrun")
    assert _train(root, copy_slice(root / "texts")) == 0
    return root / "run" / "checkpoint"


@pytest.mark.parametrize("argv,message", [
    (["--betas", "0.9"], "TrainConfig.betas=(0.9,): must be two numbers in [0, 1)"),
    (["--betas", "1.5,0.9"], "TrainConfig.betas=(1.5, 0.9)"),
    (["--model-opt", "vocab_size=10"], "--model-opt vocab_size=10: a text run's vocabulary is its tokenizer's"),
    (["--params", "100"], "--params 100: the nearest bmojo model of this shape has"),
    (["--out", "FILE"], "is a file"),
], ids=["betas-one", "betas-range", "vocab", "params", "out-file"])
def test_train_refuses(tmp_path, texts, capsys, argv, message):
    (tmp_path / "FILE").write_text("x")
    argv = [str(tmp_path / "FILE") if a == "FILE" else a for a in argv]
    args = ["train", "--corpus", str(texts), "--data", str(tmp_path / "data"), "--steps", "2", "--progress", "false",
            *TINY, "--out", str(tmp_path / "run"), *argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_threads_must_be_positive(capsys):
    assert main(["--threads", "-2", "compare", "--presets", "swa"]) == 2
    assert "--threads -2: must be a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--factors", "abc"], "--factors: 'abc' is not allowed"),
    (["--factors", "0.5"], "--factors: '0.5' is not allowed"),
    (["--segment", "0"], "--segment=0: must be a positive integer"),
    (["--context", "0"], "--context=0: must be a positive integer"),
    (["--regions", "0"], "--regions=0: must be a positive integer"),
    (["--out", "FILE"], "is a file"),
], ids=["factors-abc", "factors-half", "segment", "context", "regions", "out-file"])
def test_eval_ppl_refuses(tmp_path, lm_run, capsys, argv, message):
    (tmp_path / "FILE").write_text("x")
    argv = [str(tmp_path / "FILE") if a == "FILE" else a for a in argv]
    assert main(["eval", "ppl", "--checkpoint", str(lm_run), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert (tmp_path / "FILE").read_text() == "x"


def test_inspect_refuses_an_out_that_is_a_file(tmp_path, lm_run, capsys):
    (tmp_path / "FILE").write_text("x")
    assert main(["inspect", "--checkpoint", str(lm_run), "--text", "abc", "--out", str(tmp_path / "FILE")]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--length-factors", "x"], "--length-factors: 'x' is not allowed"),
    (["--sweep", "abc"], "--sweep: 'abc' is not allowed"),
    (["--eval-examples", "0"], "--eval-examples=0: must be a positive integer"),
    (["--workers", "0"], "--workers=0: must be a positive integer"),
    (["--presets", ""], "nothing to compare"),
    (["--seeds", "a"], "--seeds: 'a' is not allowed"),
], ids=["factors", "sweep", "eval-examples", "workers", "presets", "seeds"])
def test_compare_refuses(tmp_path, capsys, argv, message):
    assert main(["compare", "--out", str(tmp_path / "c"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "c").exists()


def test_harness_names_an_unknown_task_before_loading_the_model(tmp_path, lm_run, capsys):
    pytest.importorskip("lm_eval")
    assert main(["eval", "harness", "--checkpoint", str(lm_run), "--tasks", "nosuchtask"]) == 2
    assert "unknown lm-eval task(s) ['nosuchtask']" in capsys.readouterr().err


# 12. small things a user notices
def test_demo_twice_names_the_flags_demo_has(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metrics.jsonl").write_text("")
    assert main(["demo", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" not in err


def test_help_texts_say_what_is_true(capsys):
    import pytest as _pytest

    import bmojo

    for argv in (["inspect", "--help"], ["compare", "--help"]):
        with _pytest.raises(SystemExit):
            main(argv)
    out = capsys.readouterr().out
    assert "train --task" not in out and "15 min" not in out
    with _pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--corpus", "--tokenizer", "--vocab-size", "--data"):
        line = next(line for line in out.splitlines() if line.strip().startswith(flag))
        rest = out[out.index(line):].split("\n  -")[0]
        assert "default" in rest, rest
    assert bmojo.BMojoLM.__doc__ and "load_checkpoint" in bmojo.__all__


def test_compare_with_one_worker_shows_progress(tmp_path, capsys):
    assert main(["compare", "--presets", "swa", "--params", "20000", "--steps", "3", "--eval-examples", "8",
                 "--length-factors", "", "--workers", "1", "--model-opt", "n_layers=1", "--out",
                 str(tmp_path / "c")]) == 0
    assert "swa lr=0.006 3/3" in capsys.readouterr().err
