"""Where this process sits in a ``torchrun`` job: the process group, the device, per-rank
seeds and the sharding of a global batch into per-rank blocks.

:func:`init_distributed` reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR`` /
``MASTER_PORT``), picks the device and backend and starts (or adopts) the process group; without
those variables it returns a single-process context and starts nothing.
"""

from __future__ import annotations

import datetime
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistContext",
    "barrier",
    "get_context",
    "init_distributed",
    "is_main_process",
    "rank_seed",
    "seed_everything",
    "shard_indices",
    "shutdown_distributed",
]

#: Default timeout of collectives (seconds); NCCL's and gloo's own default is 10 / 30 minutes.
DEFAULT_TIMEOUT_S = 1800.0


# ---------------------------------------------------------------------------------------------
# the process group


def _env_int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not an integer; torchrun sets it to the "
            "process's index (unset it for a single-process run)"
        ) from None


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank: global index of this process, ``0 <= rank < world_size``.
        world_size: number of processes (1 = single process, nothing is reduced).
        local_rank: index of this process on its node (selects the GPU).
        local_world_size: processes on this node.
        backend: ``"nccl"`` / ``"gloo"`` / ...; None for a single process.
        device: the device this process computes on (``cuda:LOCAL_RANK`` or ``cpu``).
        owns_group: True when :func:`init_distributed` created the process group (and
            :func:`shutdown_distributed` will destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        """Rank 0: the process that logs, writes checkpoints and shows progress bars."""
        return self.rank == 0

    @property
    def loss_scale(self) -> float:
        """Factor for a loss normalised by global counts before ``backward()`` on a DDP- or
        FSDP2-wrapped model: ``world_size`` (both average gradients over ranks, rule 3 of
        :mod:`rlhf_core.parallel`); 1 for a single process."""
        return float(self.world_size)

    @property
    def comm_device(self) -> torch.device:
        """Device of the tensors handed to collectives (NCCL needs CUDA tensors)."""
        if self.backend == "nccl":
            return self.device
        return torch.device("cpu")


_CONTEXT: DistContext | None = None


def _pick_device(device: str | torch.device, local_rank: int) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            if local_rank >= n:
                raise ValueError(
                    f"LOCAL_RANK={local_rank} but this node has {n} CUDA device(s): start at most "
                    f"{n} processes per node (torchrun --nproc-per-node {n})"
                )
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(
    *,
    backend: str | None = None,
    device: str | torch.device = "auto",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> DistContext:
    """Start (or adopt) the process group described by the torchrun environment variables.

    Args:
        backend: ``None`` = NCCL when the device is CUDA, gloo otherwise.
        device: ``"auto"`` = ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; or an
            explicit device (``"cpu"`` forces gloo on a GPU machine).
        timeout_s: timeout of every collective (a rank stuck longer raises instead of hanging).
        env: the environment to read (default ``os.environ``; tests pass a dict).

    Returns:
        The :class:`DistContext`, also remembered for :func:`get_context`.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) no process group is created: a
    single-process context on the chosen device. When ``torch.distributed`` is already
    initialised (by the caller or another library), that group is adopted as it is.
    """
    global _CONTEXT
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE", None)
    if world is None:
        world = 1
    if world < 1:
        raise ValueError(f"environment variable WORLD_SIZE={world}: expected >= 1")
    rank = _env_int(env, "RANK", None)
    if rank is None:
        if world > 1:
            raise ValueError(
                f"WORLD_SIZE={world} but RANK is not set: launch with torchrun, which sets RANK, "
                "LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every process"
            )
        rank = 0
    if not 0 <= rank < world:
        raise ValueError(
            f"environment variable RANK={rank}: expected 0 <= RANK < WORLD_SIZE={world}"
        )
    local_rank = _env_int(env, "LOCAL_RANK", 0)
    assert local_rank is not None
    local_world = _env_int(env, "LOCAL_WORLD_SIZE", 1 if world == 1 else world)
    assert local_world is not None
    if local_rank < 0 or local_rank >= max(local_world, 1):
        raise ValueError(
            f"environment variable LOCAL_RANK={local_rank}: expected 0 <= LOCAL_RANK < "
            f"LOCAL_WORLD_SIZE={local_world}"
        )
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)

    if dist.is_available() and dist.is_initialized():
        ctx = DistContext(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=local_rank,
            local_world_size=local_world,
            backend=str(dist.get_backend()),
            device=dev,
            # called again (e.g. by each trainer of a pipeline): ownership stays where it was
            owns_group=_CONTEXT is not None and _CONTEXT.owns_group,
        )
    elif world == 1:
        ctx = DistContext(device=dev)
    else:
        if not dist.is_available():
            raise RuntimeError(
                "this torch build has no torch.distributed support; multi-process training "
                "needs a build with it"
            )
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not env.get(name):
                raise ValueError(
                    f"WORLD_SIZE={world} but {name} is not set: launch with torchrun (or set "
                    "MASTER_ADDR / MASTER_PORT to the address of rank 0)"
                )
        chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
        if chosen == "nccl" and dev.type != "cuda":
            raise ValueError(f"backend='nccl' needs a CUDA device, got device={dev}")
        kwargs: dict[str, Any] = {
            "backend": chosen,
            "rank": rank,
            "world_size": world,
            "timeout": datetime.timedelta(seconds=float(timeout_s)),
        }
        if chosen == "nccl":
            kwargs["device_id"] = dev
        if env is not os.environ:
            # an explicit environment (tests): rendezvous through it, not os.environ
            kwargs["init_method"] = f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
        dist.init_process_group(**kwargs)
        ctx = DistContext(
            rank=rank,
            world_size=world,
            local_rank=local_rank,
            local_world_size=local_world,
            backend=chosen,
            device=dev,
            owns_group=True,
        )
    _CONTEXT = ctx
    return ctx


def get_context(ctx: DistContext | None = None) -> DistContext:
    """``ctx`` when one is given; else the context of :func:`init_distributed`; before it (or
    after a shutdown) the context of an already initialised ``torch.distributed`` group, else a
    single-process CPU context. Every helper of :mod:`rlhf_core.parallel` taking an optional
    ``ctx`` resolves it here."""
    if ctx is not None:
        return ctx
    if _CONTEXT is not None:
        return _CONTEXT
    if dist.is_available() and dist.is_initialized():
        return DistContext(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            backend=str(dist.get_backend()),
        )
    return DistContext()


def shutdown_distributed() -> None:
    """Destroy the process group if :func:`init_distributed` created it; forget the context."""
    global _CONTEXT
    ctx = _CONTEXT
    _CONTEXT = None
    if ctx is not None and ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process(ctx: DistContext | None = None) -> bool:
    """True on rank 0 (and in a single process)."""
    return get_context(ctx).is_main_process


def barrier(ctx: DistContext | None = None) -> None:
    """Wait until every rank arrives; a no-op for a single process."""
    c = get_context(ctx)
    if not c.is_distributed:
        return
    if c.backend == "nccl":
        dist.barrier(device_ids=[c.device.index or 0])
    else:
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# seeds and sharding


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank`` for a run seeded with ``seed``.

    Rank 0 keeps ``seed`` itself, so a single-process run and rank 0 of a multi-process run draw
    the same numbers; other ranks get independent 31-bit seeds derived from ``(seed, rank)``
    with numpy's ``SeedSequence``.
    """
    if rank < 0:
        raise ValueError(f"rank={rank}: expected >= 0")
    if rank == 0:
        return int(seed)
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(rank)])
    return int(ss.generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed: int, ctx: DistContext | None = None, *, per_rank: bool = True) -> int:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and CUDA).

    With ``per_rank`` each rank gets :func:`rank_seed` of ``seed`` (independent sampling per
    rank); without it every rank gets ``seed`` (identical model initialisation on every rank,
    although DDP and FSDP2 broadcast rank 0's weights anyway). Returns the seed used.
    """
    c = get_context(ctx)
    s = rank_seed(seed, c.rank) if per_rank else int(seed)
    random.seed(s)
    np.random.seed(s & 0xFFFFFFFF)
    torch.manual_seed(s)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(s)
    return s


def shard_indices(
    n: int, rank: int, world_size: int, *, group_size: int = 1, allow_uneven: bool = False
) -> np.ndarray:
    """Indices ``0..n-1`` of the items rank ``rank`` keeps: a contiguous block of whole groups.

    Args:
        n: number of items (prompts, or completions when ``group_size`` > 1).
        rank, world_size: this process's rank and the number of processes.
        group_size: items per group (consecutive items ``g*group_size .. (g+1)*group_size-1``
            form group ``g``); a group is never split across ranks. Shard prompts with
            ``group_size=1`` (each prompt's samples are then generated on one rank) or
            prompt-major completions with ``group_size=num_samples``.
        allow_uneven: when the number of groups is not a multiple of ``world_size``, give the
            first ``n_groups % world_size`` ranks one group more instead of raising. Ranks with
            different batch sizes must still run the same number of micro-batches (rule 5
            of :mod:`rlhf_core.parallel`).

    Returns:
        int64 (k,) sorted indices. Concatenating the shards in rank order gives ``arange(n)``,
        so per-rank results gathered in rank order are in the single-process order.
    """
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: expected >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}: expected 0 <= rank < world_size={world_size}")
    if group_size < 1:
        raise ValueError(f"group_size={group_size}: expected >= 1")
    if n < 0:
        raise ValueError(f"n={n}: expected >= 0")
    if n % group_size:
        raise ValueError(
            f"n={n} is not a multiple of group_size={group_size}: every group must be complete"
        )
    groups = n // group_size
    base, extra = divmod(groups, world_size)
    if extra and not allow_uneven:
        raise ValueError(
            f"{groups} group(s) of {group_size} cannot be split evenly over world_size="
            f"{world_size} ranks: use a number of prompts per step that is a multiple of "
            f"{world_size}, or pass allow_uneven=True"
        )
    start = rank * base + min(rank, extra)
    count = base + (1 if rank < extra else 0)
    return np.arange(start * group_size, (start + count) * group_size, dtype=np.int64)
