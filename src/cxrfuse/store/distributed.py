"""Data-parallel extraction: each rank embeds its own shards, rank 0 finishes the store.

Ranks come from ``torch.distributed`` (gloo on CPU, nccl on GPU) and need nothing but
barriers: shard ``i`` belongs to rank ``i % world_size``, every rank writes its shards into
the shared store folder with atomic renames, and rank 0 writes ``meta.json`` after all ranks
are done. Two ways to start ranks:

- ``launch_local(n, ...)`` (``cxrfuse embed --nproc N``): N processes on this machine.
- ``torchrun`` on one or many nodes: ``torchrun --no-python --nnodes 2 --nproc-per-node 8
  --rdzv-backend c10d --rdzv-endpoint HEAD:29500 cxrfuse embed ...``; each rank reads
  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from the environment.
  The store (and cache) folder must be on storage all nodes share.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cxrfuse.problems import CxrfuseError

BARRIER_TIMEOUT = timedelta(hours=12)  # ranks wait at a barrier for the slowest one
RANK_ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)


class RankContext:
    """This process's place among the ranks (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, shard: int) -> bool:
        """Whether shard ``shard`` is this rank's to compute."""
        return shard % self.world_size == self.rank

    def barrier(self) -> None:
        """Wait for every rank (a no-op for a single process)."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def sum(self, value: int) -> int:
        """``value`` summed over all ranks (collective: every rank must call it)."""
        if self.world_size == 1:
            return int(value)
        import torch
        import torch.distributed as dist

        device = f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"
        total = torch.tensor([int(value)], dtype=torch.int64, device=device)
        dist.all_reduce(total)
        return int(total.item())


def current_context() -> RankContext:
    """The rank context of an initialised default process group, else a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return RankContext(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            backend=str(dist.get_backend()),
        )
    return RankContext()


def launched_by_torchrun() -> bool:
    """Whether the environment describes more than one rank (torchrun or launch_local)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_type: str) -> RankContext:
    """Join the process group described by RANK/WORLD_SIZE/MASTER_* (gloo, or nccl on GPU)."""
    import torch
    import torch.distributed as dist

    missing = [v for v in RANK_ENV_VARS if v != "LOCAL_RANK" and v not in os.environ]
    if missing:
        raise CxrfuseError(
            f"distributed embedding needs the environment variables {', '.join(missing)} "
            "(set by torchrun); start it with torchrun or use --nproc"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://", timeout=BARRIER_TIMEOUT)
    return current_context()


def shutdown() -> None:
    """Leave the process group (if any)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port nobody listens on right now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_entry(local_rank: int, nproc: int, port: int, target: Callable, args: tuple) -> None:
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    target(*args)


def launch_local(nproc: int, target: Callable[..., Any], args: tuple = ()) -> None:
    """Run ``target(*args)`` in ``nproc`` spawned processes that form one process group.

    ``target`` (a module-level function) calls :func:`init_from_env` itself. A rank that
    fails stops the others; its traceback is in the raised :class:`CxrfuseError`.
    """
    import torch.multiprocessing as mp

    if nproc < 1:
        raise CxrfuseError(f"--nproc must be at least 1, got {nproc}")
    try:
        mp.spawn(_rank_entry, args=(nproc, free_port(), target, args), nprocs=nproc, join=True)
    except mp.ProcessRaisedException as err:
        raise CxrfuseError(f"an embedding rank failed:\n{err}") from err
    except mp.ProcessExitedException as err:
        raise CxrfuseError(f"an embedding rank died ({err})") from err
