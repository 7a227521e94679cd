"""The `bmojo` command: help, the demo end to end in seconds, errors as exit code 2 with a message."""
import json

from bmojo.cli.main import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "compare" in out and "demo" in out


def test_demo_tiny(tmp_path, capsys):
    assert main(["demo", "--steps", "3", "--new-tokens", "5", "--seq-len", "32", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["steps"] == 3 and len(res["completion"].encode("utf-8", "replace")) >= 1
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()
    assert "generation" in capsys.readouterr().out
