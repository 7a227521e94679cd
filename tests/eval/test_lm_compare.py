"""The language-modelling comparison: presets and variant rows (a preset with overrides) on the same batches,
each sized to the parameter budget; rows.jsonl as each finishes; bad rows refused before any training."""
import json

import pytest

from bmojo.config import ConfigError
from bmojo.eval.lm_compare import LMCompareSpec, LMRow, parse_row, run_lm_compare, spec_rows
from tests.helpers import TINY_LM


def test_rows_parse_and_are_checked():
    r = parse_row("res=bmojo,ssm_residual=true,memory_size=8")
    assert (r.label, r.preset, r.model) == ("res", "bmojo", {"ssm_residual": True, "memory_size": 8})
    with pytest.raises(ConfigError, match="expected LABEL=PRESET"):
        parse_row("bmojo")
    with pytest.raises(ConfigError, match="unknown preset 'gpt'"):
        parse_row("x=gpt")
    with pytest.raises(ConfigError, match="expected FIELD=VALUE"):
        parse_row("x=bmojo,windw=3")
    with pytest.raises(ConfigError, match="label 'a/b'"):
        LMRow("a/b", "bmojo")
    with pytest.raises(ConfigError, match=r"\['bmojo'\] used twice"):
        spec_rows(LMCompareSpec(corpora={}, presets=["bmojo"], rows=[LMRow("bmojo", "bmojo", {"window": 4})]))


def test_tiny_lm_compare_with_a_variant(text_corpus, tmp_path):
    spec = LMCompareSpec(corpora={"slice": str(text_corpus.folder)}, presets=["bmojo"], model=TINY_LM,
                         rows=[LMRow("paper", "bmojo", {"ssm_residual": False}),
                               LMRow("M0", "bmojo", {"memory_size": 0})],
                         seq_len=16, params=15_000, steps=2, batch_size=2, eval_every=0, eval_batches=1,
                         factors=(1, 2), regions=1, workers=1, out=str(tmp_path / "cmp"))
    res = run_lm_compare(spec, log=lambda *_: None)
    rows = {r["label"]: r for r in res["rows"]}
    assert list(rows) == ["bmojo", "paper", "M0"]
    assert rows["bmojo"]["model"]["ssm_residual"] and not rows["paper"]["model"]["ssm_residual"]
    assert rows["M0"]["model"]["memory_size"] == 0 and rows["M0"]["options"] == {"memory_size": 0}
    for r in rows.values():  # each sized on its own, all scored on the same test tokens
        assert abs(r["params"] - 15_000) < 10_000 and r["x2"]["tokens"] == rows["bmojo"]["x2"]["tokens"] > 0
    assert rows["paper"]["x1"]["ppl"] != rows["bmojo"]["x1"]["ppl"]
    streamed = [json.loads(line)["label"] for line in (tmp_path / "cmp" / "rows.jsonl").read_text().splitlines()]
    assert sorted(streamed) == sorted(rows)
    with pytest.raises(ConfigError, match="already holds a comparison"):
        run_lm_compare(spec, log=lambda *_: None)
    bad = LMCompareSpec(**{**spec.__dict__, "rows": [LMRow("w", "bmojo", {"window": 0})], "out": str(tmp_path / "b")})
    with pytest.raises(ConfigError, match="row 'w'.*window"):
        run_lm_compare(bad, log=lambda *_: None)
    assert not (tmp_path / "b").exists()  # refused before anything was made
