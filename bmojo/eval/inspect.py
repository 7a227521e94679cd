"""`bmojo inspect`: what each B'MOJO layer did with a text.

For every B'MOJO layer (pattern B or F) of a checkpoint, on one text read in parallel mode from position 0:
  - each token's innovation score (the eidetic selector's score; layers without eidetic memory have none),
  - which tokens entered the eidetic memory (held by some query block's memory, or by the final memory),
  - with `with_store`, which tokens went to a long-term store (bmojo.memory: they left the eidetic pool; a
    scratch store in a temporary folder is attached for the read); without it the model runs as it is, no store,
  - for each query, the share of its attention (mean over heads) going to the raw window, the fading tokens,
    the eidetic tokens and the entries it retrieved from the store.  The shares come from the same softmax the
    model computes (`window_attention_shares`), and sum to 1 per query.
`report(...)` returns these numbers; `write_html` and `write_png` show them.  The page is self-contained
(inline CSS and script, no network).
"""
from __future__ import annotations

import html
import json
import tempfile
from pathlib import Path

import torch

SHARES = ("raw", "fading", "eidetic", "store")


@torch.no_grad()
def report(model, ids: torch.Tensor, token_text: list[str], store_cfg=None, with_store: bool = False) -> dict:
    """ids (T,) -> {"tokens": [...], "layers": [{"index", "kind", "scores", "in_memory", "in_store", "shares"},
    ...]}.  `with_store` attaches a scratch long-term store (searched as `store_cfg`, a bmojo.memory.StoreConfig,
    says); without it the store's share is 0 and nothing goes to a store."""
    from bmojo.layers.bmojo import BMojoMixer
    from bmojo.memory import Store

    mixers = [(i, b.mixer) for i, b in enumerate(model.layers) if isinstance(b.mixer, BMojoMixer)]
    if not mixers:
        raise ValueError(f"the model (pattern {model.cfg.pattern!r}) has no B'MOJO layers to inspect")
    was_training = model.training
    model.eval()
    with_store = with_store and any(m.memory_size > 0 for _, m in mixers)
    try:
        with tempfile.TemporaryDirectory(prefix="bmojo-inspect-") as tmp:
            store = Store.for_model(Path(tmp) / "store", model, cfg=store_cfg) if with_store else None
            out = model(ids[None], model.init_state(1, ids.device, store=store), return_state=True, record=True)
            layers = []
            T = ids.shape[0]
            for i, m in mixers:
                tr = out.records[i]
                in_mem, in_store = torch.zeros(T, dtype=torch.bool), torch.zeros(T, dtype=torch.bool)
                if tr["memory_positions"] is not None:
                    pos = tr["memory_positions"][0]
                    in_mem[pos[pos >= 0].unique().cpu()] = True
                if store is not None and i in store.layers:
                    ix = store.layer(i).index[0]
                    in_store[ix.pos[:ix.n]] = True
                final = torch.zeros(T, dtype=torch.bool)  # held by the memory after the last token
                mem = getattr(out.state.layers[i], "mem", None)
                if mem is not None:
                    p = mem.pos[0]
                    final[p[(p >= 0) & (p < T)].cpu()] = True
                shares = {name: tr["shares"].get(name, torch.zeros(1, T))[0].cpu().tolist() for name in SHARES}
                layers.append({"index": i, "kind": model.cfg.layer_kind(i),
                               "scores": tr["scores"][0].cpu().tolist() if tr["scores"] is not None else None,
                               "in_memory": in_mem.tolist(), "in_final_memory": final.tolist(),
                               "in_store": in_store.tolist(), "shares": shares})
            if store is not None:
                store.close()
    finally:
        model.train(was_training)
    return {"tokens": token_text, "layers": layers,
            "config": {k: model.cfg.to_dict()[k] for k in ("pattern", "window", "chunk", "memory_size", "selector")}}


def task_example(task: str, options: dict, seed: int = 0):
    """One sequence of a synthetic task, for inspecting a model trained on it: (ids (T,), token texts, the
    positions the task needs remembered).  Texts name each token's role: mqar `K12`/`V140` for the pairs, `?12`
    for a query, `.37` for filler; passkey `[N]`, `#7` for the needle and its digits, `[Q]` for the query."""
    import numpy as np

    from bmojo.data.synthetic import make_task

    cfg, gen = make_task(task, **options)
    x, y = gen(1, np.random.default_rng([seed, 31337]))
    ids, labels = x[0], y[0]
    T, text, keep = ids.shape[0], [], []
    if task == "mqar":
        P = cfg.num_kv_pairs
        for t, i in enumerate(ids.tolist()):
            text.append(("K" if t % 2 == 0 else "V") + str(i) if t < 2 * P else
                        ("?" + str(i) if labels[t] >= 0 else "." + str(i)))
        keep = list(range(2 * P))
    elif task == "passkey":
        n, q = cfg.digits, T - cfg.digits
        start = int((ids[:q] == 0).nonzero()[-1])
        keep = list(range(start, start + n + 1))
        for t, i in enumerate(ids.tolist()):
            text.append("[N]" if t == start else "[Q]" if t == q else
                        "#" + str(i - 2) if (start < t <= start + n or t > q) else "." + str(i))
    else:
        text = [str(i) for i in ids.tolist()]
    return ids, [t + " " for t in text], keep


def kept_summary(rep: dict, keep: list[int]) -> list[str]:
    """One line per layer: how many of the positions the task needs the eidetic memory holds after the last token
    (what the answers can read), beside how many it held at some update."""
    lines = []
    for L in rep["layers"]:
        final = L.get("in_final_memory", L["in_memory"])
        held = [p for p in keep if final[p]]
        ever = sum(1 for p in keep if L["in_memory"][p])
        lines.append(f"layer {L['index']} ({L['kind']}): after the last token the memory holds {len(held)} of the "
                     f"{len(keep)} tokens the task needs remembered (and {sum(final) - len(held)} others); "
                     f"{ever} of them were in it at some update")
    return lines


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bmojo inspect: {title}</title>
<style>
body {{ font: 14px/1.5 system-ui, sans-serif; margin: 2em; color: #222; }}
#text {{ font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; }}
#text span {{ border-bottom: 3px solid transparent; }}
#text span.mem {{ border-bottom-color: #d62728; }}
#text span.store {{ border-bottom: 3px dotted #2ca02c; }}
#text span.mem.store {{ border-bottom: 3px double #d62728; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
.key span {{ padding: 0 6px; }}
</style></head><body>
<h1>bmojo inspect</h1>
<p>{summary}</p>
<p>Layer <select id="layer"></select> &nbsp; colour: <select id="what">
<option value="score">innovation score</option><option value="raw">share to raw window</option>
<option value="fading">share to fading tokens</option><option value="eidetic">share to eidetic tokens</option>
<option value="store">share to the store</option>
</select> &nbsp; <span class="key">underlined red: entered the eidetic memory; dotted green: went to the store
(double red: both, it was evicted later)</span></p>
<div id="text"></div>
<h2>Mean attention share per layer</h2>
<table id="shares"><tr><th>layer</th><th>kind</th><th>raw window</th><th>fading</th><th>eidetic</th>
<th>store</th><th>tokens in memory</th><th>tokens in store</th></tr></table>
<script id="data" type="application/json">{data}</script>
<script>
const D = JSON.parse(document.getElementById("data").textContent);
const sel = document.getElementById("layer"), what = document.getElementById("what");
const mean = a => a.reduce((x, y) => x + y, 0) / Math.max(1, a.length);
D.layers.forEach((L, j) => {{
  sel.add(new Option(`${{L.index}} (${{L.kind}})`, j));
  const row = document.getElementById("shares").insertRow();
  [L.index, L.kind, mean(L.shares.raw).toFixed(3), mean(L.shares.fading).toFixed(3),
   mean(L.shares.eidetic).toFixed(3), mean(L.shares.store).toFixed(3), L.in_memory.filter(Boolean).length,
   L.in_store.filter(Boolean).length].forEach(v => row.insertCell().textContent = v);
}});
function draw() {{
  const L = D.layers[sel.value], key = what.value;
  const vals = key === "score" ? (L.scores || L.in_memory.map(() => 0)) : L.shares[key];
  const hi = Math.max(1e-12, ...vals);
  const box = document.getElementById("text");
  box.textContent = "";
  D.tokens.forEach((t, i) => {{
    const s = document.createElement("span");
    s.textContent = t;
    s.style.background = `rgba(31, 119, 180, ${{(vals[i] / hi * 0.85).toFixed(3)}})`;
    s.className = (L.in_memory[i] ? "mem " : "") + (L.in_store[i] ? "store" : "");
    s.title = `#${{i}} score ${{L.scores ? L.scores[i].toFixed(4) : "-"}} | raw ${{L.shares.raw[i].toFixed(3)}} ` +
              `fading ${{L.shares.fading[i].toFixed(3)}} eidetic ${{L.shares.eidetic[i].toFixed(3)}} ` +
              `store ${{L.shares.store[i].toFixed(3)}}`;
    box.appendChild(s);
  }});
}}
sel.onchange = what.onchange = draw;
draw();
</script></body></html>
"""


def write_html(rep: dict, path: str | Path, title: str = "") -> Path:
    """A self-contained page: the text coloured by score or attention share per layer, memory entries marked."""
    cfg = rep["config"]
    summary = html.escape(f"{len(rep['tokens'])} tokens; pattern {cfg['pattern']}, window {cfg['window']}, "
                          f"chunk {cfg['chunk']}, memory {cfg['memory_size']}, selector {cfg['selector']}")
    data = json.dumps({"tokens": rep["tokens"], "layers": rep["layers"]}).replace("</", "<\\/")
    path = Path(path)
    path.write_text(PAGE.format(title=html.escape(title), summary=summary, data=data), encoding="utf-8")
    return path


def write_png(rep: dict, path: str | Path) -> Path:
    """Per layer: innovation score over positions with memory entries marked, and the attention shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = rep["layers"]
    fig, axes = plt.subplots(len(layers), 2, figsize=(12, 2.4 * len(layers)), squeeze=False)
    for row, L in zip(axes, layers):
        x = range(len(rep["tokens"]))
        if L["scores"] is not None:
            row[0].plot(x, L["scores"], lw=0.8, color="tab:blue")
            mem = [i for i, m in enumerate(L["in_memory"]) if m]
            row[0].scatter(mem, [L["scores"][i] for i in mem], s=8, color="tab:red", zorder=3, label="entered memory")
            row[0].legend(fontsize=7, loc="upper right")
        row[0].set_ylabel(f"layer {L['index']} ({L['kind']})\ninnovation score", fontsize=8)
        row[1].stackplot(x, *[L["shares"][k] for k in SHARES], labels=SHARES, alpha=0.8)
        row[1].set_ylim(0, 1)
        row[1].set_ylabel("attention share", fontsize=8)
        row[1].legend(fontsize=7, loc="lower left")
    axes[-1][0].set_xlabel("token position")
    axes[-1][1].set_xlabel("query position")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
