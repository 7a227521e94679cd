"""Perplexity, bits per byte and length generalisation on a prepared corpus.

Length generalisation scores exactly the same target tokens at every context length: the evaluation set is a
few regions of `max_factor * train_len` tokens taken from documents long enough; at factor k each region is cut
into windows of `k * train_len` tokens, each read from a fresh state.  So the numbers differ only in how much
context the model was given.  Windows longer than `segment` are streamed through the recurrent mode in
segments (the state carried between them), where a parallel forward over the whole window would not fit.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from bmojo.config import ConfigError


def eval_regions(docs: list[np.ndarray], span: int, max_regions: int) -> list[np.ndarray]:
    """Up to `max_regions` disjoint slices of span + 1 tokens (inputs and shifted labels), taken round-robin
    from the documents at least that long, each document from its start."""
    per_doc = [[d[i:i + span + 1] for i in range(0, len(d) - span, span + 1)] for d in docs]
    regions: list[np.ndarray] = []
    for rnd in range(max((len(p) for p in per_doc), default=0)):
        for p in per_doc:
            if rnd < len(p) and len(regions) < max_regions:
                regions.append(np.asarray(p[rnd], dtype=np.int64))
    if not regions:
        longest = max((len(d) for d in docs), default=0)
        raise ConfigError(f"no document has {span + 1} tokens (longest: {longest}); use smaller length factors or "
                          "a shorter context")
    return regions


@torch.no_grad()
def window_losses(model, inputs: torch.Tensor, labels: torch.Tensor, segment: int, store=None) -> torch.Tensor:
    """(B, L) inputs and labels -> (B, L) per-token cross entropy (nats).  L > segment streams in segments.
    `store` (a bmojo.memory.Store with B rows, empty) gives the B'MOJO layers a long-term store."""
    B, L = inputs.shape
    if L <= segment and store is None:
        logits = model(inputs).logits
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view(B, L)
    state = model.init_state(B, inputs.device, capacity=L, store=store)
    out = []
    for s in range(0, L, segment):
        res = model(inputs[:, s:s + segment], state, return_state=True)
        state = res.state
        seg_labels = labels[:, s:s + segment]
        out.append(F.cross_entropy(res.logits.float().flatten(0, 1), seg_labels.flatten(), reduction="none")
                   .view(B, -1))
    return torch.cat(out, dim=1)


@torch.no_grad()
def length_eval(model, regions: list[np.ndarray], lengths: list[int], token_bytes: np.ndarray, *,
                segment: int = 4096, tokens_per_batch: int = 16384, progress=None, open_store=None) -> dict[int, dict]:
    """For every context length L dividing the region span: loss, perplexity, bits per byte and the mean loss
    at each position 0..L-1, over the same target tokens.  `open_store(rows)` -> an empty bmojo.memory.Store
    gives every window a fresh long-term store (its largest size is reported as `store`)."""
    span = len(regions[0]) - 1
    was = model.training
    model.eval()
    data = torch.from_numpy(np.stack(regions))  # (R, span + 1)
    x_all, y_all = data[:, :-1], data[:, 1:]
    nbytes = float(token_bytes[y_all.numpy()].sum())
    out = {}
    for L in lengths:
        if span % L:
            raise ConfigError(f"context {L} does not divide the evaluation span {span}")
        x, y = x_all.reshape(-1, L), y_all.reshape(-1, L)  # (R * span / L, L) windows
        per_pos = torch.zeros(L, dtype=torch.float64)
        bs = max(1, tokens_per_batch // L)
        store_sizes = []
        for i in range(0, x.shape[0], bs):
            store = open_store(min(bs, x.shape[0] - i)) if open_store is not None else None
            try:
                per_pos += window_losses(model, x[i:i + bs], y[i:i + bs], segment, store).double().sum(0)
            finally:
                if store is not None:
                    store.close()
                    store_sizes.append(store.info())
            if progress is not None:
                progress(L, min(i + bs, x.shape[0]), x.shape[0])
        per_pos /= x.shape[0]
        loss = per_pos.mean().item()
        out[L] = {"loss": loss, "ppl": math.exp(loss), "bpb": per_pos.sum().item() * x.shape[0] / math.log(2) / nbytes,
                  "windows": x.shape[0], "tokens": x.numel(), "per_position": per_pos.tolist()}
        if store_sizes:
            out[L]["store"] = {"entries_per_window": max(sum(d["entries"].values()) / d["rows"] for d in store_sizes),
                               "max_disk_bytes": max(d["disk_bytes"] for d in store_sizes),
                               "max_index_bytes": max(d["index_bytes"] for d in store_sizes)}
    model.train(was)
    return out


def binned(values: list[float], bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of `values` in `bins` equal position bins -> (bin centre positions, means)."""
    v = np.asarray(values)
    edges = np.linspace(0, len(v), min(bins, len(v)) + 1).astype(int)
    centres = (edges[:-1] + edges[1:] - 1) / 2
    return centres, np.array([v[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])


def plot_position_loss(curves: dict[str, list], train_len: int | None, path, title: str, bins: int = 64,
                       binned_input: bool = False):
    """Loss against token position, one curve per label (per-position losses, or [positions, means] pairs with
    binned_input); a dashed line at the training length."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, values in curves.items():
        ax.plot(*(values if binned_input else binned(values, bins)), label=label, lw=1.5)
    if train_len is not None:
        ax.axvline(train_len, color="k", ls="--", lw=1, label=f"training length {train_len}")
    ax.set_xlabel("token position in the context")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
