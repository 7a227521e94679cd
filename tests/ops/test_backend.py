"""The backend (bmojo.ops.backend): impl is resolved once into named kernels, again when the model moves, logged
once, and a kernel handed tensors it was not chosen for raises instead of running something else."""
import logging

import pytest
import torch

from bmojo.models import BMojoLM
from bmojo.ops import backend as bk
from bmojo.ops import scan_cpp
from bmojo.ops.scan import selective_scan, selective_scan_ref
from bmojo.ops.attention import window_attention_ref
from tests.helpers import tiny

needs_cpp = pytest.mark.skipif(not scan_cpp.available(), reason="no C++ compiler: no fused CPU kernels")


def test_ref_and_fast_name_their_kernels():
    ref, fast = bk.resolve("ref"), bk.resolve("fast")
    assert ref.scan is selective_scan_ref and ref.window_attention is window_attention_ref
    assert fast.scan is selective_scan and fast.impl == "fast"
    assert "scan=chunked PyTorch" in fast.describe() and "cpu/float32" in fast.describe()


@needs_cpp
def test_auto_is_fused_on_a_float32_cpu_and_fast_in_bf16():
    assert bk.resolve("auto").impl == "fused"
    auto16 = bk.resolve("auto", "cpu", torch.bfloat16)
    assert auto16.impl == "fast" and "float32 only" in auto16.describe()
    with pytest.raises(ValueError, match="impl='fused' cannot run here: the C\\+\\+ scans compute float32 only"):
        bk.resolve("fused", "cpu", torch.bfloat16)
    with pytest.raises(ValueError, match="allowed are ref, fast, fused, auto"):
        bk.resolve("cuda")


@needs_cpp
def test_a_fused_kernel_refuses_tensors_it_was_not_chosen_for():
    fused = bk.resolve("fused")
    x = torch.randn(1, 5, 4, dtype=torch.bfloat16)
    args = (x, x.abs(), -torch.ones(4, 2), torch.randn(1, 5, 2, dtype=torch.bfloat16),
            torch.randn(1, 5, 2, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="chosen for cpu/float32\\) got torch.bfloat16"):
        fused.scan(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast it computes in float32, like autocast's ops
        y, _ = fused.scan(*args)
    assert y.dtype == torch.float32


def test_the_model_resolves_again_when_it_moves_and_logs_once(caplog):
    with caplog.at_level(logging.INFO, logger="bmojo"):
        bk._logged.clear()
        models = [BMojoLM(tiny("hybrid", impl="auto")) for _ in range(2)]
    lines = [r.getMessage() for r in caplog.records if "backend" in r.getMessage()]
    assert len(lines) == 1 and "asked impl=auto" in lines[0], lines
    m = models[0].to(torch.bfloat16)
    mixers = [b.mixer for b in m.layers] + [b.mixer.ssm for b in m.layers if getattr(b.mixer, "ssm", None)]
    assert m.backend.dtype == torch.bfloat16 and all(x.backend is m.backend for x in mixers)
    assert m.impl == "fast"
