"""Bad input everywhere gets a clear error (exit 2) naming the file and the field, and loses nothing already
written: config files, corpora, checkpoints, token files."""
import json

import pytest

from bmojo.cli.main import main

TINY = ["--params", "15000", "--seq-len", "16", "--model-opt", "n_layers=1", "--model-opt", "n_heads=2",
        "--model-opt", "window=8", "--model-opt", "chunk=4", "--model-opt", "memory_size=4",
        "--model-opt", "ssm_head_dim=8", "--model-opt", "d_state=4"]


def _train(tmp_path, texts, *extra):
    return main(["train", "--corpus", str(texts), "--data", str(tmp_path / "data"), "--steps", "2", "--batch-size",
                 "2", "--eval-batches", "1", "--progress", "false", "--out", str(tmp_path / "run"), *TINY, *extra])


@pytest.mark.parametrize("config,message", [
    ({"trian": {}}, r"unknown field\(s\) \['trian'\]"),
    ({"train": {"stepz": 3}}, r"train: unknown field\(s\) \['stepz'\]"),
    ({"train": {"steps": "ten"}}, r"train: field steps='ten' has the wrong type; expected int"),
    ({"train": {"lr": -1.0}}, r"TrainConfig.lr=-1.0: must be > 0"),
    ({"model": {"windw": 8}}, r"model: unknown field\(s\) \['windw'\]"),
    ({"model": {"window": 8.5}}, r"model: field window=8.5 has the wrong type"),
    ({"seq_len": "16"}, r"field seq_len='16' has the wrong type; expected int"),
    ({"preset": "gpt"}, r"field preset='gpt'; allowed"),
])
def test_config_file_errors_name_file_and_field(tmp_path, texts, capsys, config, message):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(config))
    assert _train(tmp_path, texts, "--config", str(cfg)) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err or "TrainConfig" in err
    import re
    assert re.search(message, err), err


def test_config_file_is_used_and_the_command_line_wins(tmp_path, texts):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"train": {"steps": 3, "log_every": 1}, "model": {"memory_size": 2}}))
    assert _train(tmp_path, texts, "--config", str(cfg)) == 0  # --steps 2 on the command line wins
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    meta = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert meta["model"]["memory_size"] == 4  # --model-opt memory_size=4 wins over the file's 2


def test_empty_and_too_short_corpora(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--corpus", str(empty), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert str(empty) in capsys.readouterr().err
    short = tmp_path / "short"
    short.mkdir()
    for i in range(3):
        (short / f"{i}.txt").write_text("tiny text. " * 3)
    assert main(["train", "--corpus", str(short), "--data", str(tmp_path / "d"), "--seq-len", "512", "--steps", "1",
                 "--params", "15000", "--out", str(tmp_path / "r"), *TINY[4:]]) == 2
    err = capsys.readouterr().err
    assert "split has" in err and "seq_len" in err


def test_truncated_token_file_names_the_file(tmp_path, texts, capsys):
    assert main(["data", "prepare", "--corpus", str(texts), "--data", str(tmp_path / "data")]) == 0
    folder = next((tmp_path / "data").glob("texts-*/byte-*"))
    f = folder / "train-00000.bin"
    f.write_bytes(f.read_bytes()[:-7])
    capsys.readouterr()
    assert _train(tmp_path, folder) == 2  # the prepared folder itself: an error naming the file
    err = capsys.readouterr().err
    assert "train-00000.bin" in err and "bytes" in err
    assert _train(tmp_path, texts) == 0  # from the source texts: reported, then prepared again
    assert "train-00000.bin" in capsys.readouterr().out


def test_foreign_or_other_version_checkpoints_lose_nothing(tmp_path, texts, capsys):
    assert _train(tmp_path, texts) == 0
    ck = tmp_path / "run" / "checkpoint"
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    meta = json.loads((ck / "config.json").read_text())
    # another version: --resume refuses and the checkpoint is untouched
    (ck / "config.json").write_text(json.dumps({**meta, "version": 99}))
    assert _train(tmp_path, texts, "--resume") == 2
    assert "version 99" in capsys.readouterr().err
    (ck / "config.json").write_bytes(before["config.json"])
    # another architecture: --resume refuses, naming the differing fields
    assert _train(tmp_path, texts, "--resume", "--model-opt", "window=16") == 2
    assert "differs in ['window']" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before
    # a foreign file where the weights should be
    (ck / "model.safetensors").write_bytes(b"PK\x03\x04 not safetensors")
    assert main(["generate", "--checkpoint", str(ck), "--prompt", "x"]) == 2
    assert "model.safetensors: SHA-256" in capsys.readouterr().err  # the recorded checksum sees it first
    import hashlib
    meta["sha256"]["model.safetensors"] = hashlib.sha256((ck / "model.safetensors").read_bytes()).hexdigest()
    (ck / "config.json").write_text(json.dumps(meta))  # a foreign file recorded as if it were ours
    assert main(["generate", "--checkpoint", str(ck), "--prompt", "x"]) == 2
    assert "model.safetensors: not a readable safetensors file" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--temperature", "-1"], "--temperature: temperature must be a finite number >= 0, got -1.0"),
    (["--temperature", "nan"], "--temperature: temperature must be a finite number"),
    (["--top-p", "0"], r"--top-p: top_p must be in \(0, 1\], got 0.0"),
    (["--top-k", "0"], "--top-k: top_k must be >= 1"),
    (["--max-new-tokens", "-2"], "--max-new-tokens=-2: must be >= 0"),
    (["--prompt-file", "/no/such/prompt.txt"], "--prompt-file /no/such/prompt.txt: cannot read it"),
    (["--compile", "--storage", "/no/such/store"], "--compile with --storage: "),
])
def test_generate_options_are_checked_before_any_work(tmp_path, capsys, argv, message):
    """Checked before the checkpoint is read and before the prompt is echoed (the checkpoint here does not
    even exist: the option's error comes first)."""
    import re

    prompt = [] if "--prompt-file" in argv else ["--prompt", "To be"]
    assert main(["generate", "--checkpoint", str(tmp_path / "missing"), *prompt, *argv]) == 2
    cap = capsys.readouterr()
    assert re.search(message, cap.err), cap.err
    assert cap.out == ""


def test_generate_reads_the_prompt_from_a_file_or_stdin(tmp_path, capsys, monkeypatch):
    import io

    assert main(["demo", "--steps", "2", "--new-tokens", "4", "--out", str(tmp_path / "demo")]) == 0
    capsys.readouterr()
    text = "Beautiful is better than ugly. " * 40 + "\u00e9\n"  # UTF-8, newlines: what a shell argument mangles
    (tmp_path / "prompt.txt").write_text(text, encoding="utf-8")
    gen = ["generate", "--checkpoint", str(tmp_path / "demo" / "checkpoint"), "--max-new-tokens", "3",
           "--temperature", "0"]
    assert main(gen + ["--prompt-file", str(tmp_path / "prompt.txt")]) == 0
    from_file = capsys.readouterr().out
    assert from_file.startswith(text) and len(from_file) > len(text)
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(gen + ["--prompt-file", "-"]) == 0
    assert capsys.readouterr().out == from_file
    (tmp_path / "empty.txt").write_text("")
    assert main(gen + ["--prompt-file", str(tmp_path / "empty.txt")]) == 2
    assert "the prompt must not be empty" in capsys.readouterr().err


def test_demo_checks_its_options_before_training(tmp_path, capsys):
    import time

    t0 = time.perf_counter()
    assert main(["demo", "--prompt", "", "--out", str(tmp_path / "d")]) == 2
    assert "--prompt: must be a non-empty text" in capsys.readouterr().err
    assert main(["demo", "--steps", "0", "--out", str(tmp_path / "d")]) == 2
    assert "--steps 0: must be >= 1" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "d").exists()
