"""lm-evaluation-harness runs a bmojo checkpoint on a local multiple-choice task (a JSONL file, offline),
and its accuracy equals the one computed directly from bmojo's log-likelihoods."""
import json

import pytest
import torch

from bmojo import BMojoLM
from bmojo.data.text.tokenizer import ByteTokenizer
from bmojo.train.checkpoint import save_checkpoint
from tests.helpers import tiny

pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

DOCS = [{"question": "2 + 2 =", "choices": [" 4", " 5", " 22"], "answer": 0},
        {"question": "The sky is", "choices": [" blue", " green"], "answer": 0},
        {"question": "def f(x): return", "choices": [" x", " None", " print"], "answer": 2},
        {"question": "abc", "choices": [" def", " xyz"], "answer": 1},
        {"question": "import", "choices": [" os", " sys", " json", " re"], "answer": 3}]

TASK = """task: bmojo_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


def _loglik(model, context: str, cont: str) -> float:
    tok = ByteTokenizer()
    ctx, tgt = tok.encode(context).tolist(), tok.encode(cont).tolist()
    ids = torch.tensor([ctx + tgt])
    with torch.no_grad():
        logp = model(ids[:, :-1]).logits.log_softmax(-1)[0]
    return sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(tgt))


def test_lm_eval_task_on_a_checkpoint_matches_direct_scoring(tmp_path, monkeypatch):
    from bmojo.hf.harness import evaluate

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = BMojoLM(tiny("bmojo", vocab_size=256)).eval()
    save_checkpoint(tmp_path / "ck", model, {"tokenizer": ByteTokenizer().to_dict()})
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "bmojo_tiny_mc.yaml").write_text(TASK.format(data=data, cache=tmp_path / "cache"))
    out = evaluate(tmp_path / "ck", ["bmojo_tiny_mc"], include_path=tasks)
    got = out["results"]["bmojo_tiny_mc"]["acc,none"]
    want = sum(max(range(len(d["choices"])), key=lambda i: _loglik(model, d["question"], d["choices"][i]))
               == d["answer"] for d in DOCS) / len(DOCS)
    assert got == pytest.approx(want)


def test_harness_command_refuses_bad_options(tmp_path, capsys):
    from bmojo.cli.main import main

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ck", BMojoLM(tiny("bmojo", vocab_size=256)), {"tokenizer": ByteTokenizer().to_dict()})
    assert main(["eval", "harness", "--checkpoint", str(tmp_path / "ck"), "--tasks", ","]) == 2
    assert "--tasks: give at least one task name" in capsys.readouterr().err
    assert main(["eval", "harness", "--checkpoint", str(tmp_path / "ck"), "--tasks", "x",
                 "--include-path", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
    save_checkpoint(tmp_path / "synthetic", BMojoLM(tiny("bmojo", vocab_size=256)), {})
    assert main(["eval", "harness", "--checkpoint", str(tmp_path / "synthetic"), "--tasks", "x"]) == 2
    assert "has no tokenizer" in capsys.readouterr().err
