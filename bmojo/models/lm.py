"""The language model: embedding, n_layers blocks, final norm, LM head (tied by default)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.utils.checkpoint

from bmojo.config import ModelConfig
from bmojo.layers.norm import RMSNorm
from bmojo.layers.state import LayerState
from bmojo.models.block import Block
from bmojo.models.init import init_weights
from bmojo.ops.backend import resolve as resolve_backend


@dataclass
class ModelState:
    """The whole model's decode state: one typed state per layer, the position, and the model's fingerprint."""

    layers: list[LayerState]
    pos: int
    fingerprint: str

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.layers)


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, T, V), or (n, V) at the positions selected by `logits_at`
    state: ModelState | None = None
    aux_loss: torch.Tensor | None = None  # the layers' auxiliary losses (innovation predictor, gate penalty); not in the LM loss
    records: list | None = None  # with record=True: per layer, what a B'MOJO layer did (bmojo.eval.inspect), else None


class BMojoLM(nn.Module):
    """A language model of the B'MOJO family: embedding, `cfg.n_layers` pre-norm blocks whose mixers follow
    `cfg.pattern` (A attention, S sliding window, M SSM, F B'MOJO-F, B B'MOJO), final norm, LM head.

    model(ids (B, T)) -> LMOutput(logits (B, T, V), aux_loss, state, records); model.init_state(B) and
    model.step(ids (B,), state) decode one token at a time with a bounded state; presets: bmojo.preset(name, ...);
    a saved checkpoint: bmojo.load_checkpoint(folder) -> (model, its metadata)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.backend = resolve_backend(cfg.impl)  # for CPU float32 parameters; resolved again when the model moves
        self.fingerprint = cfg.fingerprint()  # of the architecture as built (decode checks it every step)
        self.checkpoint_activations = False  # training only: recompute each block in the backward (bmojo train)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i, self.backend) for i in range(cfg.n_layers))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        init_weights(self, cfg)

    @property
    def impl(self) -> str:
        return self.backend.impl

    def _apply(self, fn, *args, **kwargs):
        """.to() / .cuda() / .bfloat16() ...: choose the kernels for the new device and dtype (an impl that cannot
        serve them raises before anything moves), then move."""
        p = fn(self.embed.weight.detach()[:0])  # where and in which dtype the parameters are going
        backend = self.backend
        if (p.device.type, p.dtype) != (backend.device, backend.dtype):
            backend = resolve_backend(self.cfg.impl, p.device, p.dtype)
        out = super()._apply(fn, *args, **kwargs)
        self.backend = backend
        for m in self.modules():
            if m is not self and "backend" in m.__dict__:
                m.backend = backend
        return out

    # ---- checks -----------------------------------------------------------------------------------------
    def _check_ids(self, ids: torch.Tensor, rank: int, values: bool = True) -> None:
        """Shape and dtype always; with `values` also the range (one host sync: the parallel mode's, not a
        decode step's unless asked)."""
        shape = "(B, T)" if rank == 2 else "(B,)"
        if not isinstance(ids, torch.Tensor) or ids.dim() != rank:
            got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"token ids must be a {shape} tensor, got {got}")
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"token ids must be an integer tensor, got {ids.dtype}")
        if not values or torch.compiler.is_compiling():  # a data-dependent check would break the graph; the embedding
            return  # lookup still rejects an out-of-range id
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            raise ValueError(f"token ids must be in 0 .. vocab_size-1 = {self.cfg.vocab_size - 1}, got values in "
                             f"{int(ids.min())} .. {int(ids.max())}")

    def _check_state(self, state, batch: int) -> None:
        if not isinstance(state, ModelState):
            raise TypeError(f"state must be a ModelState from this model, got {type(state).__name__}")
        if state.fingerprint != self.fingerprint:
            raise ValueError(f"decode state belongs to another model (fingerprint {state.fingerprint}, this model "
                             f"{self.fingerprint})")
        if state.layers and state.layers[0].batch_size() != batch:
            raise ValueError(f"decode state has batch {state.layers[0].batch_size()}, input has batch {batch}")

    # ---- parallel mode ----------------------------------------------------------------------------------
    def forward(self, ids, state: ModelState | None = None, *, return_state: bool = False,
                logits_at: torch.Tensor | None = None, record: bool = False) -> LMOutput:
        """ids (B, T) -> logits (B, T, V).  With `state`, continues from it; `return_state` hands back the
        decode state after the last token.  `logits_at` (B, T) bool computes the head only there.  `record`
        returns what each B'MOJO layer did (attention shares, scores, memory) in `records`, without changing
        which kernels run."""
        self._check_ids(ids, 2)
        if state is not None:
            self._check_state(state, ids.shape[0])
        h = self.embed(ids.long())
        states, aux, records = [], [], []
        recompute = self.checkpoint_activations and self.training and torch.is_grad_enabled() and state is None \
            and not return_state and not record
        for i, block in enumerate(self.layers):
            if recompute:  # keep only each block's input; its activations are recomputed in the backward pass
                out = torch.utils.checkpoint.checkpoint(block, h, None, False, False, use_reentrant=False)
            else:
                out = block(h, state.layers[i] if state is not None else None, return_state, record)
            h = out[0]
            states.append(out[1])
            records.append(out.record)
            if out.aux_loss is not None:
                aux.append(out.aux_loss)
        h = self.norm_f(h)
        if logits_at is not None:
            h = h[logits_at]
        logits = self.lm_head(h)
        new_state = None
        if return_state:
            new_state = ModelState(states, (state.pos if state is not None else 0) + ids.shape[1],
                                   self.fingerprint)
        aux_loss = torch.stack(aux).sum() if aux else None
        return LMOutput(logits, new_state, aux_loss, records if record else None)

    # ---- recurrent mode ---------------------------------------------------------------------------------
    def step(self, token: torch.Tensor, state: ModelState, *, check_ids: bool = False) -> tuple[torch.Tensor, ModelState]:
        """token (B,) -> logits (B, V); the state is updated in place and returned.  Token values are range-checked
        only with `check_ids` (that costs a host sync per token; the embedding lookup still rejects a bad id)."""
        self._check_ids(token, 1, values=check_ids)
        self._check_state(state, token.shape[0])
        h = self.embed(token.long())
        for block, s in zip(self.layers, state.layers):
            h, _ = block.step(h, s)
        state.pos += 1
        return self.lm_head(self.norm_f(h)), state

    def init_state(self, batch: int, device=None, dtype=None, capacity: int | None = None,
                   store=None) -> ModelState:
        """An empty decode state.  `capacity` sizes full-attention caches (default cfg.max_seq_len).  `store` (a
        bmojo.memory.Store opened for this model with `batch` rows) attaches the long-term store: the B layers
        send what leaves their eidetic memory to it and read it back in every later chunk."""
        p = self.embed.weight
        device = device if device is not None else p.device
        dtype = dtype if dtype is not None else p.dtype
        layers = [b.mixer.init_state(batch, device, dtype, capacity) for b in self.layers]
        if store is not None:
            if store.spec["fingerprint"] != self.fingerprint:
                raise ValueError(f"store {store.folder} was made for another model")
            if store.rows != batch:
                raise ValueError(f"store {store.folder} holds {store.rows} sequence(s), the state is for batch {batch}")
            for i, ls in store.layers.items():
                layers[i].store = ls
        return ModelState(layers, 0, self.fingerprint)

    def set_progress(self, fraction: float) -> None:
        """Tell the layers how far training is (0 = start, 1 = end), for schedules such as the eidetic training
        pool's (`train_memory_anneal`); the training loop calls it before every step."""
        for block in self.layers:
            if getattr(block.mixer, "selection", None) is not None:
                block.mixer.selection.progress = float(fraction)

    # ---- accounting -------------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if non_embedding else n

    def state_bytes(self, T: int, batch: int = 1, dtype: torch.dtype | None = None) -> int:
        """Decode-state bytes after T tokens (Zoology-style state size).  Bounded layers give the same number
        for every T; full attention holds T keys and values."""
        return self.init_state(batch, "meta", dtype, capacity=max(T, 1)).nbytes()
