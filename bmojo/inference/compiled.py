"""The decode step under torch.compile.

`compile_step(model)` is `torch.compile(model.step)` with the two settings a decode step needs:
- `dynamic=True`: the position is a symbol, so one graph serves every position.  Each mixer writes its ring
  buffers through `select` (bmojo.layers.attention.ring_write) and keeps no cache keyed by position when
  compiling, so the graphs are bounded: a B'MOJO model gets one for ordinary tokens, one for a chunk's last token
  (the memory update) and a few where a slot index is 0, whatever the length (tests/inference/test_compiled.py).
- inductor's `realize_opcount_threshold=8`: with the default (30) inductor inlines the query's RoPE (a pow, a cos
  and a sin per element) into the attention's reduction over the keys, so it is recomputed for every key; the
  `transformer` step at 1k context then took 14.5 ms compiled against 4.6 ms eager on a 2-core Xeon, and 1.2 ms with
  the setting (benchmarks/decode_compile.py).
Compiling costs seconds to minutes per graph on a CPU (inductor writes C++), paid once per process.
"""
from __future__ import annotations

import torch

_INDUCTOR_OPTIONS = {"realize_opcount_threshold": 8}


def compile_step(model, backend="inductor"):
    """model.step (token (B,), state) -> (logits, state), compiled; other backends (e.g. "eager", or a counter
    from torch._dynamo.testing) get no inductor options."""
    options = dict(_INDUCTOR_OPTIONS) if backend == "inductor" else None
    return torch.compile(model.step, backend=backend, dynamic=True, options=options)
