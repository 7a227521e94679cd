"""`bmojo data prepare`, `train`, `eval ppl` and `generate` end to end on the shipped slice, in seconds; bad
input exits with code 2 and a message naming what is wrong."""
import json

import pytest

from bmojo.cli.generate import StreamDecoder
from bmojo.cli.main import main
from bmojo.data.text.tokenizer import BPETokenizer, ByteTokenizer
from tests.helpers import hf_tokenizer_folder

TINY = ["--model-opt", "n_layers=1", "--model-opt", "n_heads=2", "--model-opt", "window=8", "--model-opt", "chunk=4",
        "--model-opt", "memory_size=4", "--model-opt", "ssm_head_dim=8", "--model-opt", "d_state=4"]


@pytest.mark.parametrize("tokenizer", ["byte", "bpe", "tokenizer.json"])
def test_prepare_train_eval_generate(tmp_path, texts, capsys, tokenizer):
    data, run = tmp_path / "data", tmp_path / "run"
    if tokenizer == "tokenizer.json":  # a user's (or a converted checkpoint's) tokenizer folder
        hf_tokenizer_folder(tmp_path / "tok", [p.read_text() for p in sorted(texts.rglob("*.txt"))])
        tokenizer = str(tmp_path / "tok")
    assert main(["data", "prepare", "--corpus", str(texts), "--data", str(data), "--tokenizer", tokenizer,
                 "--vocab-size", "320", "--verify"]) == 0
    assert "checksums match" in capsys.readouterr().out
    assert main(["train", "--preset", "bmojo", "--corpus", str(texts), "--data", str(data), "--tokenizer", tokenizer,
                 "--vocab-size", "320", "--seq-len", "16", "--params", "15000", "--steps", "6", "--batch-size", "4",
                 "--eval-every", "3", "--eval-batches", "1", "--progress", "false", "--out", str(run), *TINY]) == 0
    result = json.loads((run / "result.json").read_text())
    assert result["steps"] == 6 and result["val_ppl"] > 1
    assert main(["eval", "ppl", "--checkpoint", str(run / "checkpoint"), "--factors", "1,2,4", "--regions", "2",
                 "--segment", "32"]) == 0
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert sorted(ev["results"], key=int) == ["16", "32", "64"] and ev["train_len"] == 16
    assert len({r["tokens"] for r in ev["results"].values()}) == 1  # the same tokens at every length
    assert (run / "eval" / "position_loss.png").is_file()
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(run / "checkpoint"), "--prompt", "To be", "--max-new-tokens", "12",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("To be")
    # a store that generate built (with its session) is not wiped by eval ppl without --overwrite-storage
    from bmojo.memory.disk import describe

    mem = tmp_path / "mem"
    assert main(["generate", "--checkpoint", str(run / "checkpoint"), "--prompt", "To be or not to be, that is",
                 "--max-new-tokens", "12", "--storage", str(mem)]) == 0
    kept = describe(mem)
    assert kept["has_session"]
    ppl = ["eval", "ppl", "--checkpoint", str(run / "checkpoint"), "--factors", "1,2", "--regions", "1"]
    capsys.readouterr()
    assert main([*ppl, "--storage", str(mem)]) == 2
    assert "--overwrite-storage" in capsys.readouterr().err and describe(mem) == kept
    assert main([*ppl, "--storage", str(tmp_path / "scratch")]) == 0  # a new folder is fine
    assert main([*ppl, "--storage", str(mem), "--overwrite-storage"]) == 0


@pytest.mark.parametrize("tok_kind", ["byte", "bpe"])
def test_stream_decoder_writes_exactly_the_text(tok_kind):
    text = "héllo wörld 日本 😀 — done\n"
    tok = ByteTokenizer() if tok_kind == "byte" else BPETokenizer.train([text * 3], 300)
    ids = tok.encode(text).tolist()

    class Sink:
        parts: list = []

        def write(self, s):
            self.parts.append(s)

        def flush(self):
            pass

    sink = Sink()
    stream = StreamDecoder(tok, ids[:1], sink)
    for t in ids[1:]:
        stream.push(t)
    assert stream.finish() == tok.decode(ids[1:])
    assert tok.decode(ids[:1]) + "".join(sink.parts) == text + "\n"
    assert all("\ufffd" not in p for p in sink.parts)  # never a half character


def test_errors_exit_2(tmp_path, texts, capsys):
    assert main(["train", "--corpus", str(tmp_path / "missing"), "--data", str(tmp_path)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["train", "--corpus", str(texts), "--data", str(tmp_path), "--steps", "zero"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["eval", "ppl", "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint folder" in capsys.readouterr().err
    assert main(["demo", "--steps", "1", "--new-tokens", "1", "--seq-len", "16", "--out", str(tmp_path / "demo")]) == 0
    capsys.readouterr()
    assert main(["eval", "ppl", "--checkpoint", str(tmp_path / "demo" / "checkpoint")]) == 2
    err = capsys.readouterr().err
    assert "records no corpus it was trained on" in err and "name one with --corpus" in err
    assert main(["generate", "--checkpoint", str(tmp_path / "demo" / "checkpoint"), "--prompt", ""]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert main(["data", "prepare", "--corpus", "shakespeare", "--data", str(tmp_path),
                 "--source", str(tmp_path / "none.tar.gz")]) == 2
    assert "no such file" in capsys.readouterr().err
