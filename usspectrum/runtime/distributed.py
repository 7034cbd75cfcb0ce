"""Running under ``torchrun``: process group, rank, sharding and reductions.

Everything here is a thin layer over ``torch.distributed``: the process group
is created from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``...), with NCCL when the device is a GPU and
Gloo otherwise. Without ``torchrun`` (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``)
every function here is a no-op for a single process, so the same code runs
in one process exactly as before.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..errors import USSpectrumError, UsageError


@dataclass(frozen=True)
class Context:
    """Who this process is: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def context(device: str | torch.device = "cpu") -> Context:
    """This process's place, creating the process group on first use when
    launched by torchrun (NCCL for CUDA devices, Gloo otherwise)."""
    if not launched():
        return Context()
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        minutes = float(os.environ.get("USSPECTRUM_DIST_TIMEOUT_MIN", "30"))
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=minutes))
    return Context(dist.get_rank(), dist.get_world_size(),
                   int(os.environ.get("LOCAL_RANK", "0")))


def local_device(device: str) -> str:
    """``cuda`` means this process's own GPU (``cuda:LOCAL_RANK``) under torchrun."""
    if device == "cuda" and launched():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over processes (the tensor itself in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        home = tensor.device
        wire = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
        tensor = tensor.to(wire, copy=True)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor = tensor.to(home)
    return tensor


def broadcast(obj: Any, ctx: Context) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier()


def shard_indices(count: int, ctx: Context) -> list[int]:
    """This process's disjoint share of ``range(count)`` (strided, no padding:
    unlike ``DistributedSampler``, no image is repeated to even the shares)."""
    return list(range(ctx.rank, count, ctx.world))


class BatchShard(Sampler[list[int]]):
    """This process's batches of a sequential batching of ``range(count)``:
    batch ``b`` (``batch_size`` consecutive indices) goes to rank ``b % world``.
    The union over processes is exactly the one-process batching."""

    def __init__(self, count: int, batch_size: int, ctx: Context) -> None:
        self.count, self.batch_size, self.ctx = count, batch_size, ctx

    def _batches(self) -> range:
        total = -(-self.count // self.batch_size)
        return range(self.ctx.rank, total, self.ctx.world)

    def __iter__(self) -> Iterator[list[int]]:
        for b in self._batches():
            yield list(range(b * self.batch_size, min(self.count, (b + 1) * self.batch_size)))

    def __len__(self) -> int:
        return len(self._batches())


class GlobalBatchShard(Sampler[list[int]]):
    """Training batches: the one-process shuffled batching (permutation from
    ``seed``), each global batch split into ``world`` contiguous parts of
    which this process takes its own. A last global batch smaller than the
    number of processes is dropped (some process would get no image)."""

    def __init__(self, count: int, batch_size: int, seed: int, ctx: Context) -> None:
        if batch_size < ctx.world:
            raise UsageError(f"--batch-size {batch_size} is smaller than the {ctx.world} "
                             "processes; use a global batch of at least one image per process")
        self.count, self.batch_size, self.seed, self.ctx = count, batch_size, seed, ctx

    def global_batches(self) -> list[torch.Tensor]:
        order = torch.randperm(self.count, generator=torch.Generator().manual_seed(self.seed))
        batches = list(order.split(self.batch_size))
        if batches and len(batches[-1]) < self.ctx.world:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield batch.tensor_split(self.ctx.world)[self.ctx.rank].tolist()

    def __len__(self) -> int:
        return len(self.global_batches())


def check_world(ctx: Context, device: str) -> None:
    """Refuse a GPU run with more processes than GPUs on this node."""
    if ctx.enabled and torch.device(device).type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise UsageError(f"local rank {ctx.local_rank} has no GPU (this node has "
                             f"{torch.cuda.device_count()}); use --nproc_per_node <= GPUs")


def sum_counts(values: Sequence[int]) -> list[int]:
    """Integer counts summed over processes."""
    return [int(v) for v in all_sum(torch.tensor(list(values), dtype=torch.float64)).tolist()]


def on_main(fn: Callable[[], Any], ctx: Context) -> Any:
    """Run ``fn`` on rank 0 only (file reads and checks) and hand its result,
    or the user error it raised, to every process, so all of them go on or
    all of them stop with the same message instead of waiting on each other."""
    if not ctx.enabled:
        return fn()
    result = error = None
    if ctx.is_main:
        try:
            result = fn()
        except USSpectrumError as exc:
            error = exc
    error, result = broadcast((error, result), ctx)
    if error is not None:
        raise error
    return result
