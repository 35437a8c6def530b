"""torchrun support: one process per rank, DistributedDataParallel, rank 0 writes.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`setup` joins
the process group (gloo on the CPU, nccl on GPUs); otherwise everything here is
a no-op for a single process. The model is wrapped as a :class:`LossModule`
(``forward(x) = -log_prob(x).mean()``) so DDP's gradient hooks see every
parameter of the model's ``log_prob``, the custom ops included.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


class LossModule(nn.Module):
    """``forward(x [B, D]) -> mean NLL`` of the wrapped model (what DDP calls)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return -self.model.log_prob(x).mean()


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def wrap(self, model) -> nn.Module:
        loss = LossModule(model)
        if not self.active:
            return loss
        # Buffers (orders, MADE degrees and mask index) change identically on every
        # rank, so they are not broadcast; every parameter is used in every step.
        ddp = nn.parallel.DistributedDataParallel
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters \
            else {"broadcast_buffers": False}
        on_gpu = next(model.parameters()).device.type == "cuda"
        return ddp(loss, device_ids=[self.local_rank] if on_gpu else None, **no_sync)

    def device(self, requested: str):
        """``requested`` ("cpu", "cuda", "cuda:N"); under torchrun "cuda" is this rank's GPU."""
        if requested == "cuda" and self.active:
            return torch.device("cuda", self.local_rank)
        return torch.device(requested)

    def sum(self, values: list) -> list:
        """Element-wise sum of a list of floats over the ranks."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return bool(self.sum([float(flag)])[0]) if self.active else bool(flag)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def setup() -> Context:
    """Join torchrun's process group when there is one (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("ARMODEL_FAST_DDP_BACKEND") != "gloo" \
            else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        torch.cuda.set_device(local)
    return Context(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)
