"""The B'MOJO mixer: one attention over [eidetic memory | fading tokens | raw window].

  f = SSM(x)                                  fading tokens; f_t summarises tokens <= t
  q, k, v = Wq a, Wk a, Wv a  (a = x, or a short causal conv of x when attn_conv)
  fk, fv = Wk f, Wv f        (tied; untied with tie_fading=False), rotated at their own positions
  query i attends, under one softmax, to raw keys (i-W, i], fading keys (i-2W, i-W] and the eidetic
  entries stored before its chunk at positions <= i-W.
  y = Wo o  (+ f with ssm_residual)

Eidetic memory: tokens are scored (bmojo.layers.scorers: the innovation test s_t = ||x_t - P f_{t-1}||^2 / D or a
baseline), and once per chunk of C tokens the memory keeps the M candidates of highest priority (bmojo.ops.eidetic,
one op without a loop).  P is trained only by its own auxiliary loss on detached inputs, returned with the output
(`MixerOutput.aux_loss`), so it never changes the main gradients.
`memory_size=0` gives B'MOJO-F; `fading=False, memory_size=0` gives sliding-window attention.
Selection that learns (`selection_gate`): a gate g_t = w.x_t adds to the priority; with gate_read="logit" its
log-sigmoid is added to the entry's attention logit (values unscaled, neutral at init), so every candidate in the
memory gets a gradient, and `train_memory_size` > M lets a training forward keep more candidates than M (all of
them when >= T) while evaluation and decoding keep the hard top-M; `gate_penalty` pushes every gate down.
`fading_gate` adds one learned logit offset to the fading keys (e.g. starting switched off); `null_key` one learned
key and value every query sees (joined to the per-query entries, after the store's).
Long-term store (bmojo.memory): with a store in the state, the tokens that leave the memory go there and each
query also reads its top-k entries; `train_store_topk` makes a training forward read the store its own
evictions would build, so that a model learns to use one.  The store is read and written at the layer's edge, once
per call (bmojo.memory.layer_io).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bmojo.config import ModelConfig
from bmojo.layers.attention import Attention, ring_from_stream, ring_positions, ring_read, ring_write
from bmojo.layers.bmojo_state import BMojoState, EideticCall, MemoryState, gather_logits, gather_rows
from bmojo.layers.ssm import make_ssm
from bmojo.layers.scorers import make_scorer
from bmojo.layers.scorers import uses_f_prev as scorer_uses_f_prev
from bmojo.layers.state import MixerOutput, check_call
from bmojo.memory import layer_io
from bmojo.ops.attention import attend, window_attention_shares
from bmojo.ops.rope import apply_rope, rope_cos_sin
from bmojo.ops.eidetic import Entries, eidetic_memory


def _rename_predictor(state_dict, prefix, *args):
    """Checkpoints from before the scorer module name the innovation predictor `predictor.weight`."""
    old = prefix + "predictor.weight"
    if old in state_dict:
        state_dict[prefix + "scorer.predictor.weight"] = state_dict.pop(old)


class BMojoMixer(Attention):
    def __init__(self, cfg: ModelConfig, layer_idx: int = 0, memory: bool = True, impl="fast"):
        super().__init__(cfg, window=cfg.window, impl=impl)
        self.layer_idx = layer_idx
        self.fading = cfg.fading
        self.memory_size = cfg.memory_size if memory else 0
        self.selector = cfg.selector_for(layer_idx)
        self.rule, self.decay, self.per_chunk = cfg.memory_rule, cfg.memory_decay, cfg.fifo_per_chunk
        self.train_store_topk = cfg.train_store_topk if self.memory_size > 0 else 0
        self.ssm_residual = cfg.ssm_residual
        self.uses_f_prev = self.memory_size > 0 and scorer_uses_f_prev(self.selector)
        self.ssm = make_ssm(cfg, self.backend) if (self.fading or self.ssm_residual or self.uses_f_prev) else None
        self.fading_bias = None
        if self.fading and cfg.fading_gate is not None:  # one learned logit offset on the fading segment
            self.fading_bias = nn.Parameter(torch.tensor(float(cfg.fading_gate)))
        if not cfg.tie_fading and self.fading:
            Hk, Dh = cfg.kv_heads, cfg.head_dim
            self.fk_proj = nn.Linear(cfg.d_model, Hk * Dh, bias=False)
            self.fv_proj = nn.Linear(cfg.d_model, Hk * Dh, bias=False)
        # (built after the SSM: module construction draws random numbers, so this order keeps seeded inits)
        self.scorer = make_scorer(self.selector, cfg.d_model, seed=layer_idx) if self.memory_size > 0 else None
        self.gate, self.gate_read, self.gate_input, self.memory_rope = None, cfg.gate_read, cfg.gate_input, \
            cfg.memory_rope
        self.train_memory_size = (cfg.train_memory_size or self.memory_size) if self.memory_size else 0
        self.gate_penalty, self.anneal, self.progress = cfg.gate_penalty, cfg.train_memory_anneal, 0.0
        if self.memory_size > 0 and cfg.selection_gate:
            self.gate = nn.Linear(cfg.d_model, 1, bias=False)  # a bias would shift every priority alike
            self.gate._no_reinit = True
            nn.init.zeros_(self.gate.weight)
        self.null_k = self.null_v = None
        if self.memory_size > 0 and cfg.null_key:  # zero key and value: at init a query gives it weight exp(0)
            self.null_k = nn.Parameter(torch.zeros(cfg.n_heads, cfg.head_dim))
            self.null_v = nn.Parameter(torch.zeros(cfg.n_heads, cfg.head_dim))
        self._register_load_state_dict_pre_hook(_rename_predictor)

    # ---- fading tokens ----------------------------------------------------------------------------------
    def _fading_kv(self, f, cos, sin):
        if not hasattr(self, "fk_proj"):
            return self._kv(f, cos, sin)
        B, T, _ = f.shape
        fk = self.fk_proj(f).view(B, T, self.n_kv_heads, self.head_dim)
        return apply_rope(fk, cos, sin), self.fv_proj(f).view(B, T, self.n_kv_heads, self.head_dim)

    def _at_edge(self, k, pos, edge):
        """Eidetic keys k (B, ..., M, Hk, Dh), rotated at their own positions pos (B, ..., M), rotated once more by
        edge - pos: as if at `edge` (RoPE rotations compose)."""
        delta = torch.as_tensor(edge, device=pos.device) - pos
        cos, sin = rope_cos_sin(delta.flatten(), self.head_dim, self.rope_theta, k.dtype, self.rope_fraction)
        shape = (*delta.shape, 1, self.head_dim)  # (B, ..., M, 1, Dh)
        return apply_rope(k, cos.view(shape), sin.view(shape))

    # ---- eidetic scores ---------------------------------------------------------------------------------
    def _scores(self, x, f, f_prev0, t0, state):
        """x, f (B, T, D) -> scores (B, T) of tokens t0 .. t0+T-1 (no gradient), the scorer's aux loss and state."""
        f_prev = None
        if self.uses_f_prev:
            f_prev = torch.cat([f_prev0[:, None].to(f.dtype), f[:, :-1]], dim=1)  # (B, T, D): f_{t-1}
        return self.scorer(x, f_prev, torch.arange(t0, t0 + x.shape[1], device=x.device),
                           state.mem.scorer if state is not None else None)

    def _score_step(self, x_t, f_t, state):
        f_prev = state.mem.f_prev[:, None] if self.uses_f_prev else None
        pos = None if self.uses_f_prev else torch.tensor([state.pos], device=x_t.device)  # position scorers only
        s, _, new = self.scorer(x_t[:, None], f_prev, pos, state.mem.scorer)
        if self.uses_f_prev:
            state.mem.f_prev.copy_(f_t)
        if new is not None:  # decode states are written in place
            for old, t in zip(state.mem.scorer.tensors(), new.tensors()):
                old.copy_(t)
        return s[:, 0]

    # ---- parallel mode ----------------------------------------------------------------------------------
    def forward(self, x, state=None, return_state=True, record=False) -> MixerOutput:
        """x (B, T, D) -> MixerOutput (y (B, T, D), state; aux_loss: the scorer's and the gate's penalty; record:
        with record=True, the attention shares, scores and memory positions, computed beside the kernel, never
        instead of it)."""
        check_call(self, x, state)
        B, T, D = x.shape
        t0 = state.pos if state is not None else 0
        # 1. attention input and fading memory (the SSM reads the layer input)
        a, conv_state = self._attn_input(x, state, return_state)
        f, ssm_state = self.ssm(x, state.ssm if state is not None else None, return_state) if self.ssm else (None, None)
        # 2. raw tokens: q, k, v with RoPE; the window's history from the state
        cos, sin = self._rope(t0, T, x.device, x.dtype)
        q, k, v = self._qkv(a, cos, sin)  # (B, T, H|Hk, Dh)
        ks, vs, k_start = self._raw_stream(k, v, state, t0)
        # 3. fading tokens fk, fv = Wk f, Wv f, with their own delay line of 2W
        fks, fvs, f_start = self._fading_stream(f, cos, sin, state, t0)
        # 4. eidetic memory: scores -> the memory update (bmojo.ops.eidetic) -> each query block's entries
        mem = self._eidetic(x, a if self.gate_input == "conv" else x, f, vs, ks, state, t0, k_start, return_state) \
            if self.memory_size > 0 else None
        # 5. the long-term store's top-k for each query, as one more key segment
        extra = self._with_null(self._store_entries(q, state, t0, mem), q) if mem is not None else None
        # 6. one softmax over [store | eidetic | fading | raw window]
        kw = dict(chunk=self.chunk, q_start=t0, k_start=k_start, fk=fks, fv=fvs, f_start=f_start, scale=self.scale,
                  extra=extra, **(mem.attention_kw() if mem is not None else {}))
        if self.fading_bias is not None:
            kw["fading_bias"] = self.fading_bias
        if mem is not None and self.memory_rope == "edge":  # block b reads its entries as if at a0 + bC - W
            a0 = t0 - t0 % self.chunk
            edge = a0 - self.window + self.chunk * torch.arange(kw["mem_pos"].shape[1], device=x.device)
            kw["mem_k"] = self._at_edge(kw["mem_k"], kw["mem_pos"], edge[None, :, None])
        o = self.backend.window_attention(q, ks, vs, self.window, **kw)
        y = self.o_proj(o.reshape(B, T, D))
        if self.ssm_residual:
            y = y + f
        # 7. the decode state after the last token, and what else the call computed
        new_state = None
        if return_state:
            new_state = self._new_state(state, (ks, vs, k_start), (fks, fvs, f_start), conv_state, ssm_state, mem, f,
                                        end=t0 + T)
        return MixerOutput(y, new_state, mem.aux_loss if mem is not None else None,
                           self._record(q, ks, vs, kw, mem) if record else None)

    def _new_state(self, state, raw_stream, fading_stream, conv_state, ssm_state, mem, f, end) -> BMojoState:
        """The rings hold the last W raw and 2W fading tokens before `end`; the memory its entries and the
        unfinished chunk's candidates; the store, when attached, carries over."""
        ks, vs, k_start = raw_stream
        raw = self._raw_state(ks, vs, k_start, end, conv_state, state)
        fk_ring = fv_ring = None
        if self.fading:
            fks, fvs, f_start = fading_stream
            fk_ring = ring_from_stream(fks, f_start, end, 2 * self.window)
            fv_ring = ring_from_stream(fvs, f_start, end, 2 * self.window)
        new_mem = self._memory_state(mem, f) if mem is not None else None
        return BMojoState(raw.k, raw.v, raw.conv, raw.pos, ssm_state, fk_ring, fv_ring, new_mem,
                          state.store if state is not None else None)

    def _fading_stream(self, f, cos, sin, state, t0):
        """Fading keys/values of the new tokens after the state's delay line of 2W, and the first position held."""
        if not self.fading:
            return None, None, t0
        fk, fv = self._fading_kv(f, cos, sin)
        if state is None:
            return fk, fv, t0
        hk, f_start = ring_read(state.fk, t0, 2 * self.window)
        hv, _ = ring_read(state.fv, t0, 2 * self.window)
        return torch.cat([hk, fk], 1), torch.cat([hv, fv], 1), f_start

    def _capacity(self, state, return_state) -> int:
        """The memory's slots in this call: for a training forward from an empty state that returns no state,
        `train_memory_size`, shrinking linearly to memory_size over the first `train_memory_anneal` of training
        (`progress`, set by BMojoLM.set_progress); else memory_size."""
        if not (self.training and state is None and not return_state):
            return self.memory_size
        done = min(1.0, self.progress / self.anneal) if self.anneal > 0 else 0.0
        return round(self.train_memory_size - done * (self.train_memory_size - self.memory_size))

    def _eidetic(self, x, g_in, f, vs, ks, state, t0, k_start, return_state) -> "EideticCall":
        """Scores (plus the gate, which reads g_in), the memory update over the key/value table, and what attention
        reads."""
        B, M = x.shape[0], self._capacity(state, return_state)
        f_prev0 = state.mem.f_prev if (state is not None and self.uses_f_prev) else x.new_zeros(B, self.d_model)
        scores, aux, scorer_state = self._scores(x, f, f_prev0, t0, state)
        innovation = scores
        gate = self.gate(g_in)[..., 0] if self.gate is not None else None  # (B, T), trained through what is read
        if gate is not None:
            scores = scores + gate.detach()
            if self.training and self.gate_penalty > 0 and gate.numel():  # only what the task pulls up stays high
                pen = self.gate_penalty * torch.sigmoid(gate.float()).mean()
                aux = pen if aux is None else aux + pen
        g_stream = self._gate_stream(gate, state, t0, k_start)
        vs_mem, table_g = vs, None
        if g_stream is not None and self.gate_read == "value":
            vs_mem = vs * torch.sigmoid(g_stream)[..., None, None]
        elif g_stream is not None:
            g_mem = state.mem.gate.to(g_stream.dtype) if state is not None else g_stream.new_zeros(B, M)
            table_g = torch.cat([g_mem, g_stream], 1)
        table_k, table_v, mem0, pend = self._memory_table(ks, vs_mem, state, k_start, t0, M)
        ev = eidetic_memory(scores, start=t0, chunk=self.chunk, memory=mem0, pending=pend,
                            src_offset=M + t0 - k_start, rule=self.rule, decay=self.decay, per_chunk=self.per_chunk)
        return EideticCall(ev, table_k, table_v, innovation, aux, f_prev0, g_stream, table_g, scorer_state)

    def _store_entries(self, q, state, t0, mem):
        """Per-query (keys, values, visible) from the long-term store, or None: the state's store (each query block
        reads it as it stood after the previous chunk), or in training with `train_store_topk` the store a fresh
        sequence's own evictions build."""
        W, C = self.window, self.chunk
        qpos = torch.arange(t0, t0 + q.shape[1], device=q.device)
        if state is not None and state.store is not None:
            layer_io.admit(state.store, mem.ev, mem.table_k, mem.table_v, start=t0 - t0 % C, chunk=C,
                           rotate=self._unrotate if self.memory_rope == "edge" else None)
            return self._read_store(lambda qs: layer_io.retrieve(state.store, qs, start=t0, window=W, chunk=C),
                                    q, qpos[:, None])
        if state is None and self.training and self.train_store_topk > 0:
            table_k = mem.table_k
            if self.memory_rope == "edge":  # the table's keys unrotated, as the store would hold them
                table_pos = (torch.arange(table_k.shape[1], device=q.device) - self.memory_size).clamp(min=0)
                table_k = self._unrotate(table_k, table_pos)
            return self._read_store(lambda qs: layer_io.entries_from_evictions(
                qs, table_k, mem.table_v, mem.ev, memory_size=self.memory_size, chunk=C, window=W,
                topk=self.train_store_topk), q, qpos[:, None])
        return None

    def _unrotate(self, k, pos):
        """Keys rotated at their own positions pos -> unrotated (as if at position 0)."""
        return self._at_edge(k, pos, 0)

    def _read_store(self, search, q, qpos):
        """The store's (keys, values, visible) for queries q at positions qpos (shaped to broadcast against q's
        leading dims, minus heads).  With memory_rope=edge the store holds unrotated keys k0: a query at i reading an
        entry as if at its block's edge e = i - i mod C - W scores <R(i) q, R(e) k0> = <R(i - e) q, k0>, so the
        search runs with the query rotated back by e and attention gets the found keys rotated at e: the store is
        read at the same distances at any length, like the eidetic memory."""
        if self.memory_rope != "edge":
            return search(q)
        edge = qpos - qpos % self.chunk - self.window
        ek, ev, vis = search(self._at_edge(q, edge[..., 0] if edge.dim() else edge, 0))
        return self._at_edge(ek, torch.zeros_like(edge), edge), ev, vis

    def _with_null(self, extra, q):
        """The per-query entries (keys, values (..., H, K, Dh), visible (..., H, K)) with the learned null key joined
        as one more entry every query sees; q (B, [T,] H, Dh).  Unchanged without a null key."""
        if self.null_k is None:
            return extra
        lead = q.shape[:-1]  # (B, [T,] H)
        nk = self.null_k.to(q.dtype).expand(*lead, self.head_dim)[..., None, :]
        nv = self.null_v.to(q.dtype).expand(*lead, self.head_dim)[..., None, :]
        vis = torch.ones(*lead, 1, dtype=torch.bool, device=q.device)
        if extra is None:
            return nk, nv, vis
        ek, ev, evis = extra
        return torch.cat([ek, nk.to(ek.dtype)], -2), torch.cat([ev, nv.to(ev.dtype)], -2), torch.cat([evis, vis], -1)

    def _record(self, q, ks, vs, kw, mem):
        """Inspection: where each query's attention went, from an explicit softmax beside the kernel."""
        _, shares = window_attention_shares(q, ks, vs, self.window, **kw)
        return {"shares": {name: sh.mean(-1) for name, sh in shares.items()},  # (B, T), head mean
                "scores": mem.scores if mem is not None else None,
                "memory_positions": torch.cat([mem.ev.blocks.pos.flatten(1), mem.ev.memory.pos], 1)
                if mem is not None else None}

    def _gate_stream(self, gate, state, t0, k_start):
        """The gate logits (B, stream) of the raw stream (history + new tokens), or None without a gate: the
        history's from the state's pending candidates (only they can still enter the memory), else 0."""
        if gate is None:
            return None
        B, n = gate.shape[0], t0 % self.chunk
        g_hist = gate.new_zeros(B, t0 - k_start)
        if state is not None and n:
            g_hist[:, state.mem.pend_pos[0, :n] - k_start] = state.mem.pend_gate[:, :n].to(gate.dtype)
        return torch.cat([g_hist, gate], 1)

    def _memory_table(self, ks, vs_mem, state, k_start, t0, M):
        """The key/value table the memory's `src` indexes: [the state's M memory slots | the raw stream from
        k_start], and the memory and pending candidates as Entries into it."""
        B, n = ks.shape[0], t0 % self.chunk
        if state is None:
            return (torch.cat([ks.new_zeros(B, M, *ks.shape[2:]), ks], 1),
                    torch.cat([vs_mem.new_zeros(B, M, *vs_mem.shape[2:]), vs_mem], 1),
                    Entries.empty(B, M, ks.device), Entries.empty(B, 0, ks.device))
        mem = state.mem
        slots = torch.arange(M, device=ks.device).expand(B, M)
        pend_pos = mem.pend_pos[:, :n]
        return (torch.cat([mem.k, ks], 1), torch.cat([mem.v, vs_mem], 1), Entries(mem.score, mem.pos, slots),
                Entries(mem.pend_score[:, :n], pend_pos, M + pend_pos - k_start))

    def _memory_state(self, mem: "EideticCall", f) -> MemoryState:
        ev, table_k, table_v = mem.ev, mem.table_k, mem.table_v
        B, C, dev = table_k.shape[0], self.chunk, table_k.device
        n = ev.pending.pos.shape[1]
        pend_score = torch.full((B, C), float("-inf"), device=dev)
        pend_pos = torch.full((B, C), -1, dtype=torch.long, device=dev)
        pend_score[:, :n], pend_pos[:, :n] = ev.pending.score, ev.pending.pos
        f_prev = None
        if self.uses_f_prev:
            f_prev = f[:, -1] if f.shape[1] > 0 else mem.f_prev0
        pend_gate = None
        if mem.g_stream is not None:
            pend_gate = torch.zeros(B, C, device=dev, dtype=mem.g_stream.dtype)
            pend_gate[:, :n] = mem.g_stream.gather(1, ev.pending.src - self.memory_size)
        gate = gather_logits(mem.table_g, ev.memory.src) if mem.table_g is not None else None
        return MemoryState(gather_rows(table_k, ev.memory.src), gather_rows(table_v, ev.memory.src), ev.memory.score,
                           ev.memory.pos, pend_score, pend_pos, f_prev, pend_gate, gate, mem.scorer_state)

    # ---- recurrent mode ---------------------------------------------------------------------------------
    def step(self, x_t, state):
        check_call(self, x_t, state, rank=2)
        B = x_t.shape[0]
        W, C, M, i = self.window, self.chunk, self.memory_size, state.pos
        a_t = self._attn_input_step(x_t, state)
        f_t = self.ssm.step(x_t, state.ssm)[0] if self.ssm is not None else None
        cos, sin = self._rope(i, 1, x_t.device, x_t.dtype)
        q, raw_k, raw_v = self._step_raw(a_t, state, cos, sin)
        keys, vals, vis = [raw_k], [raw_v], [self._ring_visibility(i, x_t.device).expand(B, -1)]
        if self.fading:  # delay line of 2W (its visibility is in _ring_visibility)
            fk, fv = self._fading_kv(f_t[:, None], cos, sin)
            ring_write(state.fk, i % (2 * W), fk[:, 0])
            ring_write(state.fv, i % (2 * W), fv[:, 0])
            keys.insert(0, state.fk); vals.insert(0, state.fv)
        extra = bias = None
        if M > 0:
            mem = state.mem
            mk = self._at_edge(mem.k, mem.pos, i - i % C - W) if self.memory_rope == "edge" else mem.k
            keys.insert(0, mk); vals.insert(0, mem.v)
            vis.insert(0, (mem.pos >= 0) & (mem.pos <= i - W))
            if state.store is not None:
                extra = self._read_store(lambda qs: layer_io.retrieve_step(state.store, qs, i, window=W, chunk=C),
                                         q, torch.tensor(i, device=q.device))
            extra = self._with_null(extra, q)
        keys, vis = torch.cat(keys, 1), torch.cat(vis, 1)
        if (M > 0 and state.mem.gate is not None) or self.fading_bias is not None:  # keys: [memory | fading | raw]
            parts = [F.logsigmoid(state.mem.gate) if state.mem.gate is not None else keys.new_zeros(B, M)] if M else []
            if self.fading:
                parts.append(keys.new_zeros(B, 2 * W) + (self.fading_bias if self.fading_bias is not None else 0.0))
            parts.append(keys.new_zeros(B, W))
            bias = torch.cat(parts, 1)
        o = attend(q, keys, torch.cat(vals, 1), vis, self.scale, extra, bias)
        y = self.o_proj(o.reshape(B, -1))
        if self.ssm_residual:
            y = y + f_t
        if M > 0:  # the token joins the chunk's candidates; at the chunk's end the memory is updated
            n = i % C
            score = self._score_step(x_t, f_t, state)
            if self.gate is not None:
                g = self.gate(a_t if self.gate_input == "conv" else x_t)[:, 0]
                ring_write(state.mem.pend_gate, n, g)
                score = score + g
            if n == C - 1:
                self._merge_step(state, score)
            else:
                ring_write(state.mem.pend_score, n, score)
                ring_write(state.mem.pend_pos, n, i)
        state.pos += 1
        return y, state

    def _ring_visibility(self, i: int, device) -> torch.Tensor:
        """(2W + W,) bool for query i over [fading delay line (2W slots) | raw ring (W slots)], after position i was
        written: fading slots hold positions i-2W < p <= i, visible when p <= i - W; raw slots when written.  Once
        both rings are full it depends on i mod 2W only, so those 2W patterns are made once (in eager mode: a
        compiled step computes them, as a cache keyed by position would make it recompile at every position)."""
        W = self.window
        full = i >= 2 * W - 1 and not torch.compiler.is_compiling()
        key = (i % (2 * W), device)
        cache = self.__dict__.setdefault("_vis_cache", {})
        if full and key in cache:
            return cache[key]
        raw = self._written(i, W, device)
        vis = raw
        if self.fading:
            p = ring_positions(i + 1, 2 * W, device)
            vis = torch.cat([(p >= 0) & (p <= i - W), raw])
        if full:
            cache[key] = vis
        return vis

    def _merge_step(self, state, score):
        """The chunk's last token (score (B,)): the chunk's tokens (still in the raw ring) compete with the memory
        (the same op as the parallel mode, over one chunk)."""
        mem, M, B, C = state.mem, self.memory_size, state.k.shape[0], self.chunk
        dev = mem.k.device
        slots = mem.pend_pos % self.window  # (B, C) ring slots of the chunk's tokens (the last one just written)
        ring_write(slots, C - 1, state.pos % self.window)
        cand_k, cand_v = gather_rows(state.k, slots), gather_rows(state.v, slots)
        if self.gate is not None and mem.gate is None:  # gate_read="value"
            cand_v = cand_v * torch.sigmoid(mem.pend_gate)[..., None, None].to(cand_v.dtype)
        slots_before = M + torch.arange(C - 1, device=dev).expand(B, -1)  # the chunk's earlier tokens in the pool
        pend = Entries(mem.pend_score[:, :C - 1], mem.pend_pos[:, :C - 1], slots_before)
        ev = eidetic_memory(score[:, None], start=state.pos, chunk=C, pending=pend, src_offset=M + C - 1,
                            memory=Entries(mem.score, mem.pos, torch.arange(M, device=dev).expand(B, M)),
                            rule=self.rule, decay=self.decay, per_chunk=self.per_chunk)
        pool_k, pool_v = torch.cat([mem.k, cand_k], 1), torch.cat([mem.v, cand_v], 1)
        if state.store is not None:
            layer_io.admit(state.store, ev, pool_k, pool_v, start=state.pos - C + 1, chunk=C,
                           rotate=self._unrotate if self.memory_rope == "edge" else None)
        mem.k.copy_(gather_rows(pool_k, ev.memory.src))
        mem.v.copy_(gather_rows(pool_v, ev.memory.src))
        if mem.gate is not None:
            mem.gate.copy_(gather_logits(torch.cat([mem.gate, mem.pend_gate.to(mem.gate.dtype)], 1), ev.memory.src))
        mem.score.copy_(ev.memory.score)
        mem.pos.copy_(ev.memory.pos)
        mem.pend_score.fill_(float("-inf"))
        mem.pend_pos.fill_(-1)

    def init_state(self, batch, device=None, dtype=None, capacity=None) -> BMojoState:
        raw = super().init_state(batch, device, dtype)
        Hk, Dh, W, M, C = self.n_kv_heads, self.head_dim, self.window, self.memory_size, self.chunk
        st = BMojoState(raw.k, raw.v, raw.conv, 0)
        if self.ssm is not None:
            st.ssm = self.ssm.init_state(batch, device, dtype)
        if self.fading:
            st.fk = torch.zeros(batch, 2 * W, Hk, Dh, device=device, dtype=dtype)
            st.fv = torch.zeros(batch, 2 * W, Hk, Dh, device=device, dtype=dtype)
        if M > 0:
            z = torch.zeros(batch, M, Hk, Dh, device=device, dtype=dtype)
            st.mem = MemoryState(z, z.clone(), torch.full((batch, M), float("-inf"), device=device),
                                 torch.full((batch, M), -1, dtype=torch.long, device=device),
                                 torch.full((batch, C), float("-inf"), device=device),
                                 torch.full((batch, C), -1, dtype=torch.long, device=device),
                                 torch.zeros(batch, self.d_model, device=device, dtype=dtype)
                                 if self.uses_f_prev else None,
                                 torch.zeros(batch, C, device=device, dtype=dtype) if self.gate is not None else None,
                                 torch.zeros(batch, M, device=device, dtype=dtype)
                                 if self.gate is not None and self.gate_read == "logit" else None,
                                 self.scorer.init_state(batch, device, dtype))
        return st
