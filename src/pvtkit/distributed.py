"""torchrun support: who am I, talk to the others, shut down cleanly.

Launched by `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), pvtkit's commands
join a process group: NCCL when each process has a GPU, gloo otherwise (CPU processes, or several machines with
`--nnodes`). Launched plainly, everything here degrades to a single process with no communication.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (on every rank); `[obj]` when not distributed."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks (in place, returned)."""
        if self.is_distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.is_distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask: taskset, cgroup cpusets), not the machine's count:
    more compute threads than cores makes every OpenMP barrier spin against the other threads."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """DataLoader worker processes: up to 4, leaving a core for the process that runs the model."""
    return max(0, min(4, usable_cpus() - 1))


def share_cpu_threads(ctx: DistContext, device: torch.device) -> None:
    """Under torchrun on CPU, give each process on this machine its share of the cores (not all of them each)."""
    if ctx.is_distributed and device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
        torch.set_num_threads(max(1, usable_cpus() // local))


def auto_device() -> torch.device:
    """The local GPU when there is one (under torchrun, the one LOCAL_RANK names), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device | None = None, timeout_s: float = 1800) -> DistContext:
    """Join the torchrun job when launched by torchrun (once per process), else return a single-process context.

    The backend is NCCL when `device` is a CUDA device, gloo otherwise.
    """
    if not launched_by_torchrun():
        return DistContext()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world, local_rank=local)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """A sum over the process group, differentiable: the gradient of every process's input is the sum of all
    processes' output gradients (each output feeds every process's loss)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class ProcessGroupBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm whose training statistics span every process of the group (what `torch.nn.SyncBatchNorm` does
    on GPUs, for gloo on CPUs too): per-channel sums, sums of squares and counts are all-reduced through
    a differentiable all-reduce, so N processes of B/N images normalise exactly as one
    process of B images, in forward and backward. Parameters and buffers keep BatchNorm2d's names (checkpoints do
    not change); in eval mode, or outside a process group, it is plain BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        stats = _AllReduceSum.apply(torch.cat((x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count)))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n.detach() / (n.detach() - 1).clamp_min(1), m)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def synchronise_batch_norms(model: torch.nn.Module, device: torch.device) -> int:
    """Make the model's BatchNorm2d layers normalise over the whole process group: `torch.nn.SyncBatchNorm` on
    CUDA, `ProcessGroupBatchNorm` elsewhere. Returns how many were replaced; the new layers hold the old ones'
    parameter and buffer objects (an optimizer made before keeps training them)."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.BatchNorm2d:
                continue
            cls = torch.nn.SyncBatchNorm if device.type == "cuda" else ProcessGroupBatchNorm
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            # The very parameter and buffer objects: an optimizer made before holds them, and keeps training them.
            new._parameters, new._buffers = child._parameters, child._buffers
            new.train(child.training)
            setattr(parent, name, new)
            replaced += 1
    return replaced
