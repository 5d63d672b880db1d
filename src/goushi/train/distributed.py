"""Multi-process training through torchrun: process group, rank, world size, who writes, and FSDP.

`torchrun --nproc-per-node N -m goushi.cli train ...` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT; a plain `goushi train` has none of them and runs as a single process.

Two ways to spread a run over processes. DDP (the default): every process holds the whole model and
optimiser, gradients are averaged. FSDP (`--fsdp`, PyTorch's FSDP2 `fully_shard`): each block, then the
rest of the model, is split across processes, so weights, gradients and optimiser moments take 1/N of
the memory each; the full weights are gathered block by block for each forward and backward. Checkpoints
are the same plain files either way: `full_model_state` / `full_optimizer_state` gather full tensors to
rank 0 (torch.distributed.checkpoint.state_dict), and `load_optimizer_state` puts a plain optimiser state
back into the sharded one. So a run saved with --fsdp resumes without it, or with another process count.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from goushi.errors import GoushiError
from goushi.precision import Plan


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float, device: torch.device) -> float:
        """Average a number over ranks (losses for logging)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world

    def max(self, value: float, device: torch.device) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's object, on every rank (RNG states to save)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is true on one (stop together, e.g. on Ctrl-C or a time budget)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def describe(self, fsdp: bool) -> str:
        """How many processes, and how they share the model (for the log)."""
        return f"{self.world} process(es){' (FSDP)' if fsdp else ' (DDP)' if self.enabled else ''}"

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def setup(device_name: str, fsdp: bool = False) -> tuple[Dist, str]:
    """Join the process group when launched by torchrun; return it and the device name this rank uses."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if fsdp and world <= 1:
        raise GoushiError("--fsdp shards the model across processes, and this is one process: launch it with torchrun "
                          "(torchrun --standalone --nproc-per-node 2 -m goushi.cli train ... --fsdp) or drop --fsdp "
                          "(--no-fsdp to resume such a run in one process)")
    if world <= 1:
        return Dist(), device_name
    if not dist.is_available():
        raise GoushiError("WORLD_SIZE>1 but this torch build has no torch.distributed; run a single process")
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available() or device_name.startswith("cuda")
    if fsdp and not use_cuda and device_name not in ("auto", "cpu"):
        raise GoushiError(f"--fsdp runs on CUDA GPUs or on the CPU, not on --device {device_name}; use --device cuda "
                          f"or --device cpu, or drop --fsdp")
    if use_cuda:
        # One GPU per process: rank k on its node uses cuda:k, with NCCL between them.
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
        backend = "nccl"
    else:
        device_name = "cpu" if device_name == "auto" else device_name
        backend = "gloo"
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        here = True
    return Dist(rank=rank, world=world, local_rank=local_rank, initialized_here=here), device_name


def agree_precision(plan: Plan, dist: Dist, device: torch.device) -> None:
    """On CPUs the precision is chosen by timing, which may differ between ranks: rank 0's choice holds for all."""
    mine = [float(plan.dtype == torch.bfloat16), float(plan.attn_dtype == torch.float32)]
    bf16, attn32 = dist.sum(mine if dist.is_main else [0.0, 0.0], device)
    plan.dtype = torch.bfloat16 if bf16 else torch.float32
    plan.attn_dtype = torch.float32 if attn32 else None


# ---- FSDP ------------------------------------------------------------------------------------------
def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Full (unsharded) tensors, moved to the CPU; with both set only rank 0 receives them (no CPU OOM elsewhere).
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(model: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2: each transformer block its own unit, then the root (embeddings, final norm, LM head). In place;
    build the optimisers afterwards, over the sharded parameters."""
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise GoushiError(f"--fsdp needs torch.distributed.fsdp.fully_shard (torch >= 2.6; this is "
                          f"{torch.__version__}); upgrade torch or drop --fsdp") from None
    # The mesh on the training device: fully_shard's default is CUDA whenever a GPU exists, even for a CPU run.
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """FSDP's no_sync: with gradient accumulation, reduce-scatter gradients only on the last micro-step."""
    model.set_requires_gradient_sync(sync)


def micro_step_sync(net: nn.Module, model: nn.Module, dist_: Dist, fsdp: bool, micro: int, accum: int) -> Any:
    """The context a micro-step's backward runs in: gradients cross processes only on the last micro-step of
    an accumulation (FSDP is told so; DDP skips the others' all-reduce with no_sync)."""
    if fsdp and accum > 1:
        set_gradient_sync(model, micro == accum - 1)
    elif dist_.enabled and micro < accum - 1:
        return getattr(net, "_orig_mod", net).no_sync()
    return contextlib.nullcontext()


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Collective: every rank calls it. Rank 0 gets the full weights on the CPU, the others {}."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


class WholeModel:
    """The model with full weights, for writing and sampling: the model itself, or under FSDP (`sharded`) a
    collective (every rank calls it) that gathers the weights into an unsharded CPU copy on rank 0, made once by
    `blank`; the other ranks get None."""

    def __init__(self, model: nn.Module, dist: Dist, sharded: bool, blank: Callable[[], nn.Module]):
        self.model, self.dist, self.sharded, self.blank = model, dist, sharded, blank
        self.copy: nn.Module | None = None

    def __call__(self) -> nn.Module | None:
        if not self.sharded:
            return self.model
        weights = full_model_state(self.model)
        if not self.dist.is_main:
            return None
        if self.copy is None:
            with torch.random.fork_rng(devices=[]):  # its random init must not move the run's RNG
                self.copy = self.blank()
        self.copy.load_state_dict(weights, strict=True)
        return self.copy


def even_batches(batches: Iterable[tuple[torch.Tensor, Any]], dist: Dist, device: torch.device) -> list:
    """Validation batches for a sharded model: each forward gathers weights from every rank, so every rank runs as
    many; a rank with fewer batches runs the others' extra ones on one token, with None for targets (no loss)."""
    batches = list(batches)
    rounds = int(dist.max(float(len(batches)), device))
    pad = torch.zeros((1, 1), dtype=torch.long)
    return batches + [(pad, None)] * (rounds - len(batches))


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective. Rank 0 gets the optimiser state as `opt.state_dict()` of an unsharded model would be
    (full tensors, parameters numbered in order), the others {}."""
    if not opt.state:
        # No step taken yet: nothing to gather, and get_optimizer_state_dict would initialise the moments.
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, opt, options=_full_options())
    if not osd or not osd.get("param_groups"):
        return {}
    index: dict[str, int] = {}
    groups = []
    for group in osd["param_groups"]:
        ids = []
        for fqn in group["params"]:
            index.setdefault(fqn, len(index))
            ids.append(index[fqn])
        groups.append({**group, "params": ids})
    return {"state": {index[fqn]: v for fqn, v in osd["state"].items()}, "param_groups": groups}


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Put a plain optimiser state (from `full_optimizer_state`, or a DDP / one-process run) into the optimiser
    of a sharded model. Every rank passes the same full state."""
    if not state.get("state"):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = {id(p): n for n, p in model.named_parameters()}
    fqns = [names[id(p)] for group in opt.param_groups for p in group["params"]]
    saved = [i for group in state["param_groups"] for i in group["params"]]
    if len(saved) != len(fqns) or len(state["param_groups"]) != len(opt.param_groups):
        raise ValueError(f"optimizer state has {len(saved)} parameters in {len(state['param_groups'])} groups, "
                         f"this model {len(fqns)} in {len(opt.param_groups)}")
    fqn_of = dict(zip(saved, fqns, strict=True))
    osd = {"state": {fqn_of[i]: v for i, v in state["state"].items()},
           "param_groups": [{**g, "params": [fqn_of[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, opt, osd, options=StateDictOptions(full_state_dict=True))


__all__ = ["Dist", "setup", "agree_precision", "shard", "set_gradient_sync", "micro_step_sync", "WholeModel", "even_batches", "full_model_state", "full_optimizer_state",
           "load_optimizer_state"]
