"""`bmojo bench` plumbing (the suites themselves are timed runs, kept out of the test suite): targets are
checked against the ratios of the run, memory peaks are measured, bad suite names are refused."""
import sys

import pytest
import torch

from bmojo.bench.run import TARGETS, check_targets
from bmojo.bench.timing import peak_extra_bytes, timeit
from bmojo.cli.main import main


def test_check_targets_uses_this_runs_ratios():
    results = {"suites": {"scan": {"ratios": {"fused_over_reference": 12.0, "fused_over_mambapy": 2.0}},
                          "decode": {"ratios": {"bmojo_state_bytes_32768_over_1024": 1.0}}}}
    got = {t["ratio"]: t["met"] for t in check_targets(results)}
    assert got["fused_over_reference"] is True and got["fused_over_mambapy"] is False
    assert got["bmojo_state_bytes_32768_over_1024"] is True
    assert got["bmojo_over_transformer_tokens_per_s_T2048"] is None  # not measured: neither met nor failed
    assert len(got) == len(TARGETS)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS via /proc is Linux only")
def test_peak_extra_bytes_sees_a_temporary_allocation():
    def work():
        t = torch.ones(16 * 2**20)  # 64 MiB, freed on return
        return t.sum()

    peak = peak_extra_bytes(work)
    assert peak is not None and peak >= 60 * 2**20


def test_timeit_is_a_median(monkeypatch):
    """On a fake clock each call takes a set time: the warmup calls are not timed and the result is the median
    (not the mean 2.67, the minimum 1 or the last 2)."""
    import bmojo.bench.timing as timing

    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    durations = iter([100.0, 100.0, 1.0, 5.0, 2.0])  # two warmup calls, then three timed ones
    calls = []

    def fn():
        calls.append(1)
        clock[0] += next(durations)

    assert timeit(fn, repeats=3, warmup=2) == 2.0 and len(calls) == 5


def test_unknown_suite_exits_2(capsys):
    assert main(["bench", "--suites", "scan,nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_op_calls_counts_top_level_operators_once():
    from bmojo.bench.timing import op_calls

    x, w = torch.randn(4, 8), torch.randn(3, 8)
    assert op_calls(lambda: torch.nn.functional.linear(x, w)) == 1  # linear calls mm inside: counted once
    assert op_calls(lambda: (x + 1).relu().sum()) == 3
    assert op_calls(lambda: [x + i for i in range(5)]) == 5  # a Python loop pays per iteration
