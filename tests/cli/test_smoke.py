"""Every command the README shows runs end to end at a tiny size, in one chain (demo -> generate with a store
-> memory -> inspect; prepare -> train -> resume -> eval ppl; compare; bench; export -> HF -> convert;
eval harness), and the README names no command this chain leaves out."""
import json
import re
import shlex
from pathlib import Path

import pytest

from bmojo.cli.main import main
from tests.cli.test_run_safety import TINY

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> set[tuple[str, ...]]:
    """(command,) or (command, action) of every `bmojo` line in the README's shell blocks."""
    out = set()
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0]
            if "bmojo " not in line:
                continue
            line = line.split("-m bmojo ", 1)[-1] if "-m bmojo " in line else line.split("bmojo ", 1)[-1]
            words = [w for w in shlex.split(line) if not w.startswith("-")]
            if words and words[0] in SUBACTIONS:
                out.add((words[0], words[1]))
            elif words:
                out.add((words[0],))
    return out


SUBACTIONS = {"data", "eval", "memory"}


def test_every_readme_command_runs_at_a_tiny_size(tmp_path, texts, capsys, monkeypatch):
    ran: set[tuple[str, ...]] = set()

    def run(*argv, code=0):
        rc = main([str(a) for a in argv])
        assert rc == code, (argv, capsys.readouterr().err[-2000:])
        ran.add((argv[0], argv[1]) if argv[0] in SUBACTIONS else (argv[0],))

    demo, mem = tmp_path / "demo", tmp_path / "mem"
    run("demo", "--steps", 2, "--new-tokens", 4, "--out", demo)
    run("generate", "--checkpoint", demo / "checkpoint", "--prompt", "Beautiful is better than ugly. " * 3,
        "--max-new-tokens", 3, "--storage", mem)
    run("memory", "info", mem)
    run("memory", "clear", mem)
    run("inspect", "--checkpoint", demo / "checkpoint", "--text", "Simple is better than complex.",
        "--out", tmp_path / "inspect")
    data, lm = tmp_path / "data", tmp_path / "lm"
    run("data", "prepare", "--corpus", texts, "--data", data)
    common = ["--corpus", texts, "--data", data, "--batch-size", 2, "--eval-batches", 1, "--progress", "false"]
    run("train", *common, "--steps", 2, "--out", lm, *TINY)
    run("train", "--resume", "--out", lm, "--steps", 3, "--progress", "false")
    run("eval", "ppl", "--checkpoint", lm / "checkpoint", "--factors", "1,2", "--regions", 1)
    run("compare", "--presets", "swa,bmojo", "--steps", 2, "--batch-size", 4, "--params", 20000,
        "--eval-examples", 8, "--workers", 1, "--length-factors", 2, "--vocab-size", 32, "--seq-len", 24,
        "--num-kv-pairs", 3, "--query-start", 12, "--model-opt", "window=4", "--model-opt", "chunk=4",
        "--out", tmp_path / "cmp")
    run("bench", "--quick", "--suites", "decode", "--out", tmp_path / "bench")
    transformers = pytest.importorskip("transformers")
    run("export", demo / "checkpoint", tmp_path / "hf")
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2))
    llama.save_pretrained(tmp_path / "llama")
    run("convert", tmp_path / "llama", tmp_path / "converted")
    pytest.importorskip("lm_eval")
    from tests.hf.test_harness import DOCS, TASK

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "tiny.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "bmojo_tiny_mc.yaml").write_text(TASK.format(data=tmp_path / "tiny.jsonl",
                                                                        cache=tmp_path / "cache"))
    run("eval", "harness", "--checkpoint", demo / "checkpoint", "--tasks", "bmojo_tiny_mc",
        "--include-path", tmp_path / "tasks", "--out", tmp_path / "harness.json")
    documented = _readme_commands() - {("torchrun",)}  # torchrun is `bmojo train`, in tests/train/test_distributed.py
    assert documented <= ran, f"README commands without a smoke run: {sorted(documented - ran)}"
