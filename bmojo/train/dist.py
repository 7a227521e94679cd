"""Data-parallel training on PyTorch's own engine: DDP, or FSDP2 (`fully_shard`) by option.

The model code stays single-device; `setup()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and
starts the process group (gloo on CPU, NCCL on GPU), `wrap()` wraps the model from outside.  Every rank reads the
same global batch for a step and keeps its own rows, and each rank's loss is weighted by its share of the
batch's labelled tokens, so N processes compute the gradient of the same global-batch loss a single process
would.  Checkpoints hold full (unsharded) tensors written by rank 0, so a checkpoint written by N processes loads
into any M.

Launch (one machine, 2 processes):        torchrun --nproc_per_node 2 -m bmojo train ...
Several machines (run on each, NODE = 0 .. NNODES-1):
    torchrun --nnodes NNODES --node_rank NODE --nproc_per_node GPUS_PER_NODE \
             --rdzv_backend c10d --rdzv_endpoint HOST0:29500 -m bmojo train ... [--parallel fsdp]
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

PARALLEL = ("ddp", "fsdp")


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device
    mode: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch."""
        n = batch.shape[0] // self.world
        return batch[self.rank * n:(self.rank + 1) * n]

    def all_sum(self, x: float) -> float:
        t = torch.tensor([float(x)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def any(self, flag: bool) -> bool:
        return self.all_sum(1.0 if flag else 0.0) > 0

    def barrier(self) -> None:
        dist.barrier()


def setup(mode: str = "ddp", batch_size: int | None = None) -> Dist | None:
    """The process group when launched by torchrun with WORLD_SIZE > 1, else None (a single process)."""
    from bmojo.config import ConfigError

    if mode not in PARALLEL:
        raise ConfigError(f"TrainConfig.parallel={mode!r}: allowed: {PARALLEL}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if batch_size is not None and batch_size % world:
        raise ConfigError(f"TrainConfig.batch_size={batch_size}: must be a multiple of the {world} processes "
                          "(it is the global batch, split evenly)")
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device, mode)


def wrap(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """DDP around the model, or FSDP2: each block sharded, then the root (embedding, final norm, tied head)."""
    model.to(d.device)
    if d.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for block in model.layers:
        fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer, d: Dist):
    """(model state, optimizer state) as full tensors on CPU, keyed by parameter name; only rank 0 receives them
    (every rank must call this)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, opt, options=opts)


def load_full_optimizer(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a full, name-keyed optimizer state into a (possibly sharded) model's optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def named_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """A single-process optimizer's state in the name-keyed layout of torch.distributed.checkpoint."""
    names = {id(p): n for n, p in model.named_parameters()}
    state = {names[id(p)]: dict(s) for p, s in opt.state.items()}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
              for g in opt.param_groups]
    return {"state": state, "param_groups": groups}


def set_named_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, named: dict) -> None:
    """The inverse of named_optimizer_state, into a single-process optimizer over `model`."""
    params = dict(model.named_parameters())
    for name, s in named["state"].items():
        opt.state[params[name]] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
