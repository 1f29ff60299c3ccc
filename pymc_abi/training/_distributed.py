"""Data-parallel training under ``torch.distributed``: who is running, and on what.

Torch only. :func:`group` says whether a training run is data-parallel: it is when a
default process group of more than one rank is initialized, as after ``torchrun`` and
``torch.distributed.init_process_group``, or when ``torchrun``'s environment variables
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``) say this process is one of several ranks, in
which case the group is initialized here (NCCL with CUDA, else gloo) and left initialized
for the rest of the script. One rank, or no group: training runs as in a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["Ranks", "checked_device", "group", "launched", "local_device", "shard"]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run."""

    rank: int
    world: int

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the rank that reports and saves."""
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun's environment says this process is one of several ranks."""
    env = os.environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return False
    try:
        return int(env["WORLD_SIZE"]) > 1
    except ValueError:
        return False


def group(init: bool = True) -> Ranks | None:
    """The data-parallel ranks, or ``None`` for a single process.

    Parameters
    ----------
    init : bool, default True
        Initialize the default process group from torchrun's environment variables when
        they name several ranks and no group is initialized yet.
    """
    import torch.distributed as dist

    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if not (init and launched()):
            return None
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    world = dist.get_world_size()
    return Ranks(dist.get_rank(), world) if world > 1 else None


def is_main() -> bool:
    """Whether this process reports and saves: rank 0, or the only process."""
    ranks = group(init=False)
    return ranks is None or ranks.main


def local_device() -> torch.device:
    """The default device: ``cuda:LOCAL_RANK`` under a launcher with CUDA, else as usual."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if group(init=False) is not None or launched():
        local = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cuda")


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous part ``[start, stop)`` of ``n`` items that ``rank`` of ``world`` owns.

    The parts are disjoint, cover ``range(n)`` and differ in size by at most one.

    Examples
    --------
    >>> [shard(10, r, 3) for r in range(3)]
    [(0, 3), (3, 6), (6, 10)]
    """
    return rank * n // world, (rank + 1) * n // world


def broadcast_int(value: int, device) -> int:
    """Rank 0's ``value`` on every rank."""
    import torch.distributed as dist

    t = torch.tensor([int(value) % 2**62], dtype=torch.int64, device=device)
    dist.broadcast(t, 0)
    return int(t.item())


def all_reduce(values, device, op: str = "sum") -> list[float]:
    """``values`` (floats) summed, or their minimum, over all ranks."""
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    return t.tolist()


def checked_device(device) -> torch.device:
    """``device=`` checked: ``None`` (the default device), or a torch device this machine
    has; anything else is refused, naming the argument."""
    if device is None:
        return local_device()  # "cuda" or the CPU; under torchrun cuda:LOCAL_RANK
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must be a torch device such as 'cpu' or 'cuda' (or None), got {device!r}."
        ) from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r}, but this torch has no CUDA device (torch {torch.__version__}, "
            "CUDA available: False). Use device='cpu', or None for the default."
        )
    return chosen
