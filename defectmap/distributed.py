"""Data-parallel training and prediction on torch.distributed (launched by torchrun or `--devices N`).

Every process holds the whole model and one slice of each global batch. Gradients are averaged with
one all-reduce per optimizer step, and BatchNorm statistics cover the global batch (torch's
SyncBatchNorm on CUDA; `GlobalBatchNorm2d` below elsewhere, since SyncBatchNorm is CUDA-only), so N
processes with a global batch B compute what one process computes with batch B.
"""

import os
import subprocess
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

from defectmap.errors import DefectmapError


def setup(device: torch.device) -> tuple[int, int]:
    """(rank, world size): joins the process group when launched by torchrun, else (0, 1).

    The backend follows the device the processes compute on (NCCL for CUDA, gloo for the CPU), not
    whether CUDA exists: CPU processes on a GPU machine (`train.device=cpu`) use gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def local_device(rank: int, requested: torch.device) -> torch.device:
    """This process's device: its own GPU (by local rank) under torchrun on CUDA, else `requested`."""
    if requested.type == "cuda" and dist.is_initialized():
        check_gpus(int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())), requested)
        index = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return requested


def check_gpus(processes: int, device: torch.device) -> None:
    """CUDA processes each need a GPU of their own (NCCL refuses two on one): more than the machine has is an error."""
    count = torch.cuda.device_count()
    if device.type == "cuda" and processes > count:
        raise DefectmapError(f"{processes} processes on this machine but {count} GPU(s): use --devices {count} or "
                             "fewer, or CPU processes with --set train.device=cpu (predict: --device cpu)")  # fmt: skip


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every process's batch, on any backend.

    Sums and sums of squares go through a differentiable all-reduce, so gradients also see the
    global statistics. Same parameters and buffers as BatchNorm2d: checkpoints stay interchangeable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        channels = x.shape[1]
        count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
        totals = differentiable_all_reduce(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        var = (totals[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach())
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var.detach() * n / (n - 1))
            self.num_batches_tracked.add_(1)
        scale = self.weight / torch.sqrt(var + self.eps)
        return (x - mean[None, :, None, None]) * scale[None, :, None, None] + self.bias[None, :, None, None]


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace BatchNorm2d layers with ones whose statistics span all processes."""
    if next(module.parameters()).is_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _global_batchnorm(module)  # CPU processes, also on a machine that has a GPU


def _global_batchnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        # A frozen BatchNorm (PRN's backbone) only ever uses its running statistics: leave it as it is.
        if type(child) is nn.BatchNorm2d and child.affine and child.weight.requires_grad:
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            _global_batchnorm(child)
    return module


def broadcast_state(module: nn.Module) -> None:
    """Make every process start from rank 0's parameters and buffers."""
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=0)


def average_gradients(params: list[nn.Parameter], world: int) -> None:
    """One flat all-reduce of every gradient, divided by the number of processes."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def shard_batches(order: list[int], batch: int, rank: int, world: int) -> list[int]:
    """This process's slice of every global batch of `order` (incomplete trailing batches dropped)."""
    if batch % world:
        raise DefectmapError(f"train.batch_size={batch} must be divisible by the number of processes ({world})")
    local = batch // world
    full = len(order) // batch * batch
    return [i for start in range(0, full, batch) for i in order[start + rank * local : start + (rank + 1) * local]]


def without_devices(argv: list[str]) -> list[str]:
    """The command line minus `--devices N` (torchrun's processes must not launch again)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--devices":
            skip = True
        elif not arg.startswith("--devices="):
            kept.append(arg)
    return kept


def launch(devices: int, argv: list[str], device: torch.device | None) -> int:
    """Re-run the command line `argv` (without its `--devices`) under torchrun with `devices` processes on this
    machine; returns its exit code.

    `device` (None where not known before the processes start, as for --resume) is checked against the GPUs first.
    """
    if device is not None:
        check_gpus(devices, device)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
               "-m", "defectmap", *without_devices(argv)]  # fmt: skip
    return subprocess.call(command)
