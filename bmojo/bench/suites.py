"""The measurements of `bmojo bench`.  Each suite returns {"rows": [...], "ratios": {...}} measured in this run.

- scan: the mamba1 selective scan (fused C++, chunked PyTorch, sequential reference, mambapy's parallel scan
  when installed) and the mamba2 chunked SSD at equal width, forward + backward; and the whole Mamba mixer
  against HF transformers' MambaMixer torch path when transformers is installed.
- attention: sliding-window attention on CPU, forward (prefill): our chunked op, SDPA with a band mask, and
  flex_attention with a block mask (compiled, forward only on CPU).
- train: training tokens/s (forward + backward + AdamW) of every preset at a matched parameter count, the
  peak memory a step adds and its operator calls (torch profiler: what a GPU pays in launches); and the
  `transformer` preset in the Llama layout (attn_conv=false) against HF transformers' LlamaForCausalLM (SDPA) at
  the same sizes, timed in alternating rounds, when transformers is installed.
- decode: per-token latency and decode-state bytes after a prefill of 1k, 8k and 32k tokens.
"""
from __future__ import annotations

import importlib.util
import statistics
import time

import torch
import torch.nn.functional as F

from bmojo.bench.timing import fwd_bwd, op_calls, peak_extra_bytes, scan_inputs, sync, timeit
from bmojo.models import BMojoLM, size_to_params
from bmojo.ops import cuda, scan_cpp
from bmojo.ops.attention import Segments, Stream, window_attention
from bmojo.ops.scan import selective_scan, selective_scan_fused, selective_scan_ref
from bmojo.ops.ssd import ssd_chunked

PRESETS = ["transformer", "swa", "mamba", "hybrid", "bmojo-f", "bmojo"]
# the model family at a matched size for the train and decode suites (as in benchmarks/lm_compare.py)
MODEL = {"n_layers": 4, "n_heads": 4, "window": 64, "chunk": 32, "memory_size": 32, "ssm_head_dim": 32}
ROUNDS = 3  # timed rounds of the train suite, after a warm-up round


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def scan_suite(quick: bool, device="cpu", log=print) -> dict:
    B, T, E, N, P = (2, 256, 64, 8, 32) if quick else (8, 2048, 256, 16, 64)
    g = torch.Generator().manual_seed(0)
    inp = scan_inputs("mamba1", B, T, E, N, P, g, device)
    inp2 = scan_inputs("mamba2", B, T, E, N, P, g, device)
    on_cuda = torch.device(device).type == "cuda"
    impls = {}
    if on_cuda and cuda.has("mamba_ssm"):
        impls["mamba1 fused (mamba_ssm CUDA)"] = lambda: selective_scan_fused(*inp)
    elif not on_cuda and scan_cpp.available():
        impls["mamba1 fused (C++)"] = lambda: scan_cpp.selective_scan_cpp(*inp)
    elif not on_cuda:
        log(f"  (fused scan unavailable: {scan_cpp.error()})")
    impls["mamba1 chunked (PyTorch)"] = lambda: selective_scan(*inp)
    impls["mamba1 sequential reference"] = lambda: selective_scan_ref(*inp)
    if _has("mambapy"):
        from mambapy.mamba import MambaBlock

        impls["mambapy parallel scan"] = lambda: (MambaBlock.selective_scan(None, *inp), None)
    if not on_cuda and scan_cpp.available():
        impls["mamba2 fused (C++, same width)"] = lambda: scan_cpp.ssd_cpp(*inp2)
    impls["mamba2 chunked SSD (PyTorch)"] = lambda: ssd_chunked(*inp2)
    rows = []
    for name, fn in impls.items():
        inputs = inp2 if name.startswith("mamba2") else inp
        sec = timeit(fwd_bwd(fn, inputs), repeats=2 if "reference" in name else 3)
        rows.append({"name": name, "seconds": sec, "tokens_per_s": B * T / sec})
        log(f"  {name:34s} {sec * 1e3:9.1f} ms  {B * T / sec:10.0f} tok/s")
    t = {r["name"]: r["seconds"] for r in rows}
    best1 = next(n for n in t if n.startswith("mamba1"))  # the fused kernel where there is one
    best2 = next(n for n in t if n.startswith("mamba2"))
    ratios = {"fused_over_reference": t["mamba1 sequential reference"] / t[best1],
              "mamba2_over_fused_time": t[best2] / t[best1]}
    if "mambapy parallel scan" in t:
        ratios["fused_over_mambapy"] = t["mambapy parallel scan"] / t[best1]
    rows += _hf_mixer_rows(quick, device, log)
    if any(r["name"].startswith("HF") for r in rows):
        hf = next(r for r in rows if r["name"].startswith("HF"))
        ours = next(r for r in rows if r["name"].startswith("bmojo Mamba1Mixer"))
        ratios["bmojo_mixer_over_hf_mixer"] = hf["seconds"] / ours["seconds"]
    return {"sizes": {"B": B, "T": T, "E": E, "N": N, "P": P}, "paths": {"mamba1": best1, "mamba2": best2},
            "rows": rows, "ratios": ratios}


def _hf_mixer_rows(quick: bool, device, log) -> list[dict]:
    """Our Mamba1Mixer (fused) against HF's MambaMixer torch path, same sizes and weights layout."""
    if not _has("transformers"):
        return []
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    from bmojo import preset
    from bmojo.layers.ssm import Mamba1Mixer

    B, T, D = (2, 256, 32) if quick else (8, 512, 128)  # T=512: HF's backward is quadratic in T
    hf = MambaMixer(MambaConfig(hidden_size=D, state_size=16, expand=2, conv_kernel=4, use_mambapy=False), 0)
    ours = Mamba1Mixer(preset("mamba", d_model=D, d_state=16, expand=2, d_conv=4, impl="fused"), "fused")
    hf, ours = hf.to(device), ours.to(device)
    x = torch.randn(B, T, D, device=device, requires_grad=True)
    rows = []
    for name, fn in ((f"bmojo Mamba1Mixer (fused), D={D}", lambda: (ours(x)[0], None)),
                     (f"HF MambaMixer, D={D}", lambda: (hf(x), None))):  # its torch path unless mamba_ssm
        # HF's torch path indexes x[:, t] in a Python loop, so its backward is quadratic in T (minutes a call
        # at T=2048 on 2 CPU cores): it gets one timed call and no warmup
        hf_row = name.startswith("HF")
        sec = timeit(fwd_bwd(fn, [x]), repeats=1 if hf_row else 2, warmup=0 if hf_row else 1)
        rows.append({"name": name, "seconds": sec, "tokens_per_s": B * T / sec})
        log(f"  {name:34s} {sec * 1e3:9.1f} ms  {B * T / sec:10.0f} tok/s")
    return rows


def attention_suite(quick: bool, device="cpu", log=print) -> dict:
    """Sliding-window attention forward, (B, T, H, Dh) = (4, T, 4, 32), W = 64."""
    B, H, Dh, W = 4, 4, 32, 64
    lengths = (512,) if quick else (2048, 8192)
    rows = []
    for T in lengths:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, T, H, Dh, generator=g).to(device) for _ in range(3))
        fns = {"chunked (bmojo)": lambda: window_attention(q, Segments(Stream(k, v)), W, chunk=W),
               "SDPA + band mask": _sdpa_band(q, k, v, W)}
        flex = _flex_band(q, k, v, W, log)
        if flex is not None:
            fns["flex_attention (compiled)"] = flex
        with torch.no_grad():
            for name, fn in fns.items():
                sec = timeit(fn, repeats=3)
                rows.append({"name": name, "T": T, "seconds": sec, "tokens_per_s": B * T / sec})
                log(f"  T={T:5d} {name:28s} {sec * 1e3:9.1f} ms  {B * T / sec:10.0f} tok/s")
    ratios = {}
    for T in lengths:
        t = {r["name"]: r["seconds"] for r in rows if r["T"] == T}
        for other in t:
            if other != "chunked (bmojo)":
                ratios[f"chunked_over_{other.split()[0].lower()}_T{T}"] = t[other] / t["chunked (bmojo)"]
    return {"sizes": {"B": B, "H": H, "Dh": Dh, "W": W}, "rows": rows, "ratios": ratios}


def _sdpa_band(q, k, v, W):
    T = q.shape[1]
    i = torch.arange(T, device=q.device)
    mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < W)
    return lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  attn_mask=mask).transpose(1, 2)


def _flex_band(q, k, v, W, log):
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    T = q.shape[1]

    def band(b, h, qi, ki):
        return (qi >= ki) & (qi - ki < W)

    try:
        mask = create_block_mask(band, None, None, T, T, device=q.device)
        fn = torch.compile(flex_attention, dynamic=False)
        qh, kh, vh = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(qh, kh, vh, block_mask=mask)
        log(f"  (flex_attention compiled for T={T} in {time.perf_counter() - t0:.0f}s)")
    except Exception as e:  # compile needs a working C++ toolchain; report and go on without it
        log(f"  (flex_attention unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120]})")
        return None
    return lambda: fn(qh, kh, vh, block_mask=mask)


def _model(name: str, params: int, max_len: int, device="cpu") -> BMojoLM:
    torch.manual_seed(0)
    return BMojoLM(size_to_params(name, params, vocab_size=256, max_seq_len=max_len, **MODEL)).to(device)


def _train_step(model, opt, ids):
    """One forward + backward + AdamW step of `model` (a BMojoLM, or an HF model: no aux_loss) on ids (B, T + 1)."""
    def step():
        out = model(ids[:, :-1])
        loss = F.cross_entropy(out.logits.flatten(0, 1), ids[:, 1:].flatten())
        aux = getattr(out, "aux_loss", None)
        (loss + (aux if aux is not None else 0)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _spread(times) -> float:
    """(slowest - fastest) / median of one measurement's rounds: how far this run's timings moved."""
    return (max(times) - min(times)) / statistics.median(times)


def train_suite(quick: bool, device="cpu", presets=PRESETS, params: int = 1_000_000, log=print) -> dict:
    """tokens/s of forward + backward + AdamW at T in (512, 2048, 8192), 8192 tokens per step.  Every (preset, T)
    is timed once per round, in turn, over ROUNDS rounds after a warm-up one (median), so that a slow spell of the
    machine lands on every preset alike rather than on one: the ratios compare steps timed side by side."""
    lengths, tokens = ((128, 512), 1024) if quick else ((512, 2048, 8192), 8192)
    steps = {}
    for name in presets:
        model = _model(name, params, max(lengths), device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for T in lengths:
            ids = torch.randint(0, 256, (max(1, tokens // T), T + 1), generator=torch.Generator().manual_seed(T))
            steps[name, T] = (_train_step(model, opt, ids.to(device)), model, ids)
    times = {key: [] for key in steps}
    for r in range(ROUNDS + 1):
        for key, (step, _, _) in steps.items():
            t = timeit(step, repeats=1, warmup=0)
            if r:  # round 0 warms up
                times[key].append(t)
    rows = []
    for (name, T), (step, model, ids) in steps.items():
        sec = statistics.median(times[name, T])
        peak = peak_extra_bytes(step, device)
        ops = op_calls(step)
        rows.append({"preset": name, "T": T, "batch": ids.shape[0], "params": model.num_params(), "seconds": sec,
                     "tokens_per_s": ids[:, :-1].numel() / sec, "peak_step_bytes": peak, "op_calls": ops,
                     "spread": _spread(times[name, T])})
        log(f"  {name:12s} T={T:5d} B={ids.shape[0]:2d}: {ids[:, :-1].numel() / sec:8.0f} tok/s "
            f"(rounds within {rows[-1]['spread']:.0%}), step peak {(peak or 0) / 2**20:7.1f} MiB, {ops} op calls")
    ratios = {}
    tps = {(r["preset"], r["T"]): r["tokens_per_s"] for r in rows}
    ops = {(r["preset"], r["T"]): r["op_calls"] for r in rows}
    for T in lengths:
        if ("bmojo", T) in tps and ("transformer", T) in tps:
            ratios[f"bmojo_over_transformer_tokens_per_s_T{T}"] = tps[("bmojo", T)] / tps[("transformer", T)]
    lo, hi = min(lengths), max(lengths)
    mid = 2048 if 2048 in lengths else lo
    if ("bmojo", mid) in ops and ("bmojo", hi) in ops:
        ratios[f"bmojo_op_calls_T{hi}_over_T{mid}"] = ops[("bmojo", hi)] / ops[("bmojo", mid)]
    llama = _llama_rows(quick, device, params, log) if _has("transformers") else []
    if llama:
        rows += llama
        ratios[f"llama_layout_over_hf_llama_tokens_per_s_T{llama[0]['T']}"] = \
            llama[0]["tokens_per_s"] / llama[1]["tokens_per_s"]
    return {"sizes": {"params": params, "tokens_per_step": tokens, "lengths": list(lengths)}, "rows": rows,
            "ratios": ratios}


def _llama_rows(quick: bool, device, params: int, log) -> list[dict]:
    """The `transformer` preset with attn_conv=false (the Llama layout) against HF LlamaForCausalLM (SDPA) of the
    same sizes and parameter count: training tokens/s at T=2048, B=4 (quick: 256, 2), medians of alternating
    rounds so that a slow spell of the machine lands on both."""
    from transformers import LlamaConfig, LlamaForCausalLM

    T, B = (256, 2) if quick else (2048, 4)
    cfg = size_to_params("transformer", params, vocab_size=256, max_seq_len=T, **{**MODEL, "attn_conv": False})
    torch.manual_seed(0)
    ours = BMojoLM(cfg).to(device)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=256, hidden_size=cfg.d_model, intermediate_size=cfg.d_hidden, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads, rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=T,
        attn_implementation="sdpa")).to(device)
    ids = torch.randint(0, 256, (B, T + 1), generator=torch.Generator().manual_seed(T)).to(device)
    steps, times = {}, {}
    for name, m in (("transformer, Llama layout", ours), ("HF LlamaForCausalLM (SDPA)", hf)):
        step = _train_step(m, torch.optim.AdamW(m.parameters(), lr=1e-4), ids)
        step()
        steps[name], times[name] = step, []
    for _ in range(2 if quick else 4):
        for name, step in steps.items():
            times[name].append(timeit(step, repeats=1, warmup=0))
    rows = []
    for (name, t), m in zip(times.items(), (ours, hf)):
        sec = sorted(t)[len(t) // 2]
        rows.append({"preset": name, "T": T, "batch": B, "params": sum(p.numel() for p in m.parameters()),
                     "seconds": sec, "tokens_per_s": B * T / sec})
        log(f"  {name:28s} T={T:5d} B={B:2d}: {B * T / sec:8.0f} tok/s ({rows[-1]['params']:,} params)")
    return rows


@torch.no_grad()
def decode_suite(quick: bool, device="cpu", presets=PRESETS, params: int = 1_000_000, log=print) -> dict:
    """Per-token decode latency after a prefill of each context length.  Every (preset, context) is timed in
    interleaved rounds (8 steps each, 6 rounds, the first a warm-up; median), so a slow spell of the machine lands
    on every preset and context alike."""
    contexts = (256, 1024) if quick else (1024, 8192, 32768)
    models, states, prefill, tok = {}, {}, {}, {}
    for name in presets:
        model = models[name] = _model(name, params, max(contexts) + 64, device).eval()
        for ctx in contexts:
            ids = torch.randint(0, 256, (1, ctx), generator=torch.Generator().manual_seed(ctx)).to(device)
            if torch.device(device).type == "cuda":  # compile the first segment's kernels outside the timing
                model(ids[:, :4096], model.init_state(1, capacity=ctx + 64), return_state=True)
            state = model.init_state(1, capacity=ctx + 64)
            sync()
            t0 = time.perf_counter()
            for s in range(0, ctx, 4096):  # prefill in segments (bounded memory for every preset)
                state = model(ids[:, s:s + 4096], state, return_state=True).state
            sync()
            prefill[name, ctx], states[name, ctx], tok[name, ctx] = time.perf_counter() - t0, state, ids[:, -1]
    times = {key: [] for key in states}
    for r in range(6):
        for (name, ctx) in states:
            for _ in range(8):
                t = time.perf_counter()
                logits, states[name, ctx] = models[name].step(tok[name, ctx], states[name, ctx])
                sync()
                if r:  # the first round warms up
                    times[name, ctx].append(time.perf_counter() - t)
                tok[name, ctx] = logits.argmax(-1)
    rows = []
    for (name, ctx), t in times.items():
        lat = statistics.median(t)
        nbytes = states[name, ctx].nbytes()
        rows.append({"preset": name, "context": ctx, "latency_s": lat, "state_bytes": nbytes,
                     "prefill_tokens_per_s": ctx / prefill[name, ctx]})
        log(f"  {name:12s} context {ctx:6d}: {lat * 1e3:7.2f} ms/token, state {nbytes:>12,} bytes, "
            f"prefill {ctx / prefill[name, ctx]:8.0f} tok/s")
    ratios = {}
    lo, hi = min(contexts), max(contexts)
    lat = {(r["preset"], r["context"]): r for r in rows}
    for name in presets:
        ratios[f"{name}_latency_{hi}_over_{lo}"] = lat[(name, hi)]["latency_s"] / lat[(name, lo)]["latency_s"]
        ratios[f"{name}_state_bytes_{hi}_over_{lo}"] = lat[(name, hi)]["state_bytes"] / lat[(name, lo)]["state_bytes"]
    if "bmojo" in presets and "mamba" in presets:
        ratios[f"bmojo_over_mamba_latency_{lo}"] = lat[("bmojo", lo)]["latency_s"] / lat[("mamba", lo)]["latency_s"]
    return {"sizes": {"params": params, "contexts": list(contexts)}, "rows": rows, "ratios": ratios}

