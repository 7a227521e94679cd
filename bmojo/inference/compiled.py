"""The decode step under torch.compile.

`compile_step(model)` is `torch.compile(model.step)` with the two settings a decode step needs:
- `dynamic=True`: the position is a symbol, so one graph serves every position.  Each mixer writes its ring
  buffers through `select` (bmojo.layers.attention.ring_write) and keeps no cache keyed by position when
  compiling, so the graphs are bounded: a B'MOJO model gets one for ordinary tokens, one for a chunk's last token
  (the memory update) and a few where a slot index is 0, whatever the length (tests/inference/test_compiled.py).
- inductor's `realize_opcount_threshold=8`: with the default (30) inductor inlines the query's RoPE (a pow, a cos
  and a sin per element) into the attention's reduction over the keys, so it is recomputed for every key; the
  `transformer` step at 1k context then took 23.9 ms compiled against 4.8 ms eager on a 2-core Xeon
  (`python benchmarks/decode_compile.py --presets mamba,transformer --inductor-defaults`), and 2.2 ms with the setting
  (`python benchmarks/decode_compile.py`; benchmarks/results/decode_compile*.json).
Compiling costs seconds to minutes per graph on a CPU (inductor writes C++), paid once per process.
"""
from __future__ import annotations

import torch

_INDUCTOR_OPTIONS = {"realize_opcount_threshold": 8}


def compile_step(model, backend="inductor", inductor_options: dict | None = None):
    """model.step (token (B,), state) -> (logits, state), compiled.  `inductor_options` replaces the settings above
    (`{}`: inductor's defaults); other backends (e.g. "eager", or a counter from torch._dynamo.testing) get none."""
    options = dict(_INDUCTOR_OPTIONS if inductor_options is None else inductor_options)
    return torch.compile(model.step, backend=backend, dynamic=True, options=options if backend == "inductor" else None)
