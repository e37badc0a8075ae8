"""Multi-process training under ``torchrun``: process group, sharding, cross-rank reductions,
DDP / FSDP2 wrapping.

One process per device. ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and
``MASTER_ADDR`` / ``MASTER_PORT``); :func:`init_distributed` reads them, picks the device
(``cuda:LOCAL_RANK`` when CUDA is available, else the CPU) and the backend (NCCL on CUDA, gloo on
the CPU) and starts the process group. Without those variables (a plain ``python`` run) it is a
single-process no-op and every helper here returns its input unchanged, so trainers call the same
hooks whether or not they run distributed.

The rule that makes N ranks compute the same update as one process on the same global batch
-------------------------------------------------------------------------------------------
1. **Shard whole prompts** (:func:`shard_indices`): every rank draws the same global prompt
   indices from the same seeded sampler and keeps its contiguous block, so a prompt's group of
   samples is generated, scored and held on one rank.
2. **Normalise by global counts.** :mod:`rlhf_core.losses` divides by ``num_tokens`` /
   ``num_seqs``; pass the counts of the whole global minibatch (:func:`global_token_counts`, one
   all-reduce of two integers). Each rank's loss is then its *share* of the global loss:
   ``Σ_ranks loss_r = loss_global``, and likewise for the gradients.
3. **Undo the gradient averaging.** DDP all-reduces gradients with a *mean* over ranks, and FSDP2
   reduce-scatters with a mean too, so a rank that back-propagates its share ends up with
   ``Σ_r ∇loss_r / W = ∇loss_global / W``. Multiply the loss by ``W`` before ``backward()``
   (:attr:`DistContext.loss_scale`, :func:`scale_loss`); the synchronised gradient is then
   exactly the single-process gradient. (verl's ``agg_loss`` multiplies by the data-parallel
   size for the same reason.) Report the *unscaled* loss, summed over ranks
   (:func:`all_reduce_metrics`).
4. **Reduce what spans the batch.** Group advantages with groups split across ranks or with a
   batch-wide scale (:func:`distributed_group_advantages`: gather one score per sequence, run the
   same Rust kernel on the global batch, keep the local rows), token-level whitening
   (:func:`global_masked_moments`, :func:`global_masked_whiten`) and logged metrics
   (:func:`all_reduce_metrics`).
5. **Same number of collective calls on every rank.** Every rank must run the same number of
   minibatches, micro-batches and backward passes (DDP and FSDP2 synchronise inside
   ``backward``), and, for FSDP2, the same number of forward passes during generation.

Everything here was tested with the gloo backend and 2 CPU processes (``tests/test_distributed.py``);
``docs/scaling.md`` shows the ``torchrun`` command lines for one and several nodes.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistContext",
    "STRATEGIES",
    "all_gather_object",
    "all_gather_ragged",
    "all_reduce_max",
    "all_reduce_metrics",
    "all_reduce_min",
    "all_reduce_sum",
    "barrier",
    "broadcast_module",
    "flagged_ranks",
    "fsdp2_available",
    "gather_full_optimizer_state_dict",
    "gather_full_state_dict",
    "get_context",
    "global_token_counts",
    "init_distributed",
    "is_fsdp2",
    "is_main_process",
    "load_full_optimizer_state_dict",
    "load_full_state_dict",
    "no_sync",
    "rank_seed",
    "scale_loss",
    "seed_everything",
    "shard_indices",
    "shutdown_distributed",
    "unwrap_model",
    "wrap_model",
]

Strategy = Literal["ddp", "fsdp2", "none"]
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp2", "none")

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
        FSDP2-wrapped model: ``world_size`` (both average gradients over ranks, see the module
        docstring); 1 for a single process."""
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


def get_context() -> DistContext:
    """The context of :func:`init_distributed`; before it (or after a shutdown) the context of
    an already initialised ``torch.distributed`` group, else a single-process CPU context."""
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


def _ctx(ctx: DistContext | None) -> DistContext:
    return get_context() if ctx is None else ctx


def is_main_process(ctx: DistContext | None = None) -> bool:
    """True on rank 0 (and in a single process)."""
    return _ctx(ctx).is_main_process


def barrier(ctx: DistContext | None = None) -> None:
    """Wait until every rank arrives; a no-op for a single process."""
    c = _ctx(ctx)
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
    c = _ctx(ctx)
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
            different batch sizes must still run the same number of micro-batches (see the
            module docstring).

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


# ---------------------------------------------------------------------------------------------
# reductions


def _reduce_op(op: str) -> Any:
    return {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]


def _all_reduce(x: Any, op: str, ctx: DistContext | None) -> Any:
    c = _ctx(ctx)
    if isinstance(x, torch.Tensor):
        if not c.is_distributed:
            return x
        t = x.detach().to(c.comm_device, copy=True)
        dist.all_reduce(t, op=_reduce_op(op))
        return t.to(x.device)
    if isinstance(x, np.ndarray):
        if not c.is_distributed:
            return x
        t = torch.from_numpy(np.ascontiguousarray(x)).to(c.comm_device, copy=True)
        dist.all_reduce(t, op=_reduce_op(op))
        return t.cpu().numpy()
    if isinstance(x, (bool, np.bool_)):
        raise TypeError("cannot all-reduce a bool; convert it to int first")
    if isinstance(x, (int, np.integer)):
        if not c.is_distributed:
            return int(x)
        t = torch.tensor([int(x)], dtype=torch.int64, device=c.comm_device)
        dist.all_reduce(t, op=_reduce_op(op))
        return int(t.item())
    if isinstance(x, (float, np.floating)):
        if not c.is_distributed:
            return float(x)
        t = torch.tensor([float(x)], dtype=torch.float64, device=c.comm_device)
        dist.all_reduce(t, op=_reduce_op(op))
        return float(t.item())
    raise TypeError(
        f"cannot all-reduce a {type(x).__name__}: expected an int, a float, a numpy array or a "
        "torch tensor"
    )


def all_reduce_sum(x: Any, ctx: DistContext | None = None) -> Any:
    """Sum over ranks of an int (exact, int64), a float (float64), a numpy array or a tensor.

    Returns the same kind (a new tensor / array on the input's device; the input is not
    modified). A single process returns the input as it is.
    """
    return _all_reduce(x, "sum", ctx)


def all_reduce_max(x: Any, ctx: DistContext | None = None) -> Any:
    """Maximum over ranks; same kinds as :func:`all_reduce_sum`."""
    return _all_reduce(x, "max", ctx)


def all_reduce_min(x: Any, ctx: DistContext | None = None) -> Any:
    """Minimum over ranks; same kinds as :func:`all_reduce_sum`."""
    return _all_reduce(x, "min", ctx)


def global_token_counts(
    masks: torch.Tensor | Iterable[torch.Tensor], ctx: DistContext | None = None
) -> tuple[int, int]:
    """``(num_tokens, num_seqs)`` of the global minibatch: :func:`rlhf_core.losses.
    count_tokens_and_seqs` of this rank's (micro-batch) masks, summed over ranks in one
    all-reduce. Pass them to every loss call of every rank (see the module docstring)."""
    from rlhf_core.losses import count_tokens_and_seqs

    tokens, seqs = count_tokens_and_seqs(masks)
    c = _ctx(ctx)
    if not c.is_distributed:
        return tokens, seqs
    t = torch.tensor([tokens, seqs], dtype=torch.int64, device=c.comm_device)
    dist.all_reduce(t)
    return int(t[0].item()), int(t[1].item())


def _host_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Plain floats of Python numbers and 0-d tensors, the tensors read with one
    device-to-host copy for all of them (float32 -> float64 is exact, so the numbers are those
    of ``float(v)`` one by one)."""
    out = {k: v for k, v in metrics.items() if not isinstance(v, torch.Tensor)}
    tensors = {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    if tensors:
        flat = torch.stack([v.detach().reshape(()).double() for v in tensors.values()])
        out.update(zip(tensors, flat.cpu().tolist(), strict=True))
    return {k: float(out[k]) for k in metrics}


def all_reduce_metrics(
    metrics: Mapping[str, Any], ctx: DistContext | None = None
) -> dict[str, float]:
    """Combine per-rank metrics into the global ones, following :func:`rlhf_core.losses.
    merge_metrics`: keys ending in ``_min`` / ``_max`` take the minimum / maximum over ranks,
    every other key is **summed** (loss metrics computed with global counts are each rank's
    share, so their sum is the global value).

    Ranks may hold different key sets (a rank without valid tokens has no ``ratio_min``): the
    union is used, a missing key counts as 0 / +inf / -inf. Three collectives (key union, sum,
    max) whatever the number of metrics. Values: Python numbers or 0-d tensors.
    """
    local = _host_floats(metrics)
    c = _ctx(ctx)
    if not c.is_distributed:
        return local
    key_lists: list[list[str] | None] = [None] * c.world_size
    dist.all_gather_object(key_lists, sorted(local))
    keys = sorted(set().union(*(set(k or []) for k in key_lists)))
    sum_keys = [k for k in keys if not k.endswith(("_min", "_max"))]
    max_keys = [k for k in keys if k.endswith("_max")]
    min_keys = [k for k in keys if k.endswith("_min")]
    out: dict[str, float] = {}
    if sum_keys:
        s = torch.tensor(
            [local.get(k, 0.0) for k in sum_keys], dtype=torch.float64, device=c.comm_device
        )
        dist.all_reduce(s)
        out.update(zip(sum_keys, s.tolist(), strict=True))
    if max_keys or min_keys:
        # one MAX reduction: maxima as they are, minima negated
        vals = [local.get(k, -np.inf) for k in max_keys] + [-local.get(k, np.inf) for k in min_keys]
        m = torch.tensor(vals, dtype=torch.float64, device=c.comm_device)
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
        res = m.tolist()
        out.update(zip(max_keys, res[: len(max_keys)], strict=True))
        out.update(zip(min_keys, [-v for v in res[len(max_keys) :]], strict=True))
    return {k: out[k] for k in keys}


def all_gather_ragged(x: Any, ctx: DistContext | None = None) -> tuple[Any, list[int]]:
    """Concatenate a 1-D array of any length from every rank, in rank order.

    Args:
        x: 1-D numpy array or torch tensor (float, integer or bool); lengths may differ between
            ranks, dtypes must not.

    Returns:
        ``(values, counts)``: the concatenation (same kind, dtype and, for tensors, device as
        ``x``) and the number of items each rank contributed. Two collectives (lengths, padded
        values).
    """
    is_np = isinstance(x, np.ndarray)
    if not is_np and not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a 1-D numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D, got shape {tuple(x.shape)}")
    c = _ctx(ctx)
    if not c.is_distributed:
        return x, [int(x.shape[0])]
    t = torch.from_numpy(np.ascontiguousarray(x)) if is_np else x.detach()
    out_device = t.device
    dtype = t.dtype
    send = t.to(torch.uint8) if dtype == torch.bool else t
    send = send.to(c.comm_device)
    n = torch.tensor([send.shape[0]], dtype=torch.int64, device=c.comm_device)
    counts_t = [torch.zeros_like(n) for _ in range(c.world_size)]
    dist.all_gather(counts_t, n)
    counts = [int(v.item()) for v in counts_t]
    width = max(max(counts), 1)
    padded = torch.zeros(width, dtype=send.dtype, device=c.comm_device)
    padded[: send.shape[0]] = send
    parts = [torch.empty_like(padded) for _ in range(c.world_size)]
    dist.all_gather(parts, padded)
    full = torch.cat([p[:k] for p, k in zip(parts, counts, strict=True)])
    full = full.to(out_device)
    if dtype == torch.bool:
        full = full.bool()
    return (full.numpy() if is_np else full), counts


def all_gather_object(obj: Any, ctx: DistContext | None = None) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` for a single process).

    For small things only (RNG states, key lists): it pickles through the process group.
    """
    c = _ctx(ctx)
    if not c.is_distributed:
        return [obj]
    out: list[Any] = [None] * c.world_size
    dist.all_gather_object(out, obj)
    return out


def flagged_ranks(flag: bool, ctx: DistContext | None = None) -> list[int]:
    """The ranks that passed ``flag=True`` (one all-reduce of ``world_size`` integers).

    Lets every rank take the same branch after a local check, e.g. all ranks stop when one of
    them found a non-finite value, instead of the others waiting in the next collective.
    """
    c = _ctx(ctx)
    if not c.is_distributed:
        return [0] if flag else []
    t = torch.zeros(c.world_size, dtype=torch.int64, device=c.comm_device)
    t[c.rank] = int(bool(flag))
    dist.all_reduce(t)
    return [int(r) for r in torch.nonzero(t).flatten().tolist()]


# ---------------------------------------------------------------------------------------------
# model wrapping


def fsdp2_available() -> bool:
    """Whether this torch build has FSDP2 (``torch.distributed.fsdp.fully_shard``)."""
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


def is_fsdp2(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by ``fully_shard`` (FSDP2): its forward passes and state
    dict gathering are then collectives."""
    return _is_fsdp2(model)


def _is_fsdp2(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - depends on the torch build
        return False
    return isinstance(model, FSDPModule)


def _block_modules(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks to shard one by one: modules whose class is listed in the HF
    model's ``_no_split_modules`` (e.g. ``LlamaDecoderLayer``), else the children of every
    ``nn.ModuleList``."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    if names:
        blocks = [m for m in model.modules() if type(m).__name__ in names and m is not model]
        if blocks:
            return blocks
    out: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, nn.ModuleList):
            out.extend(m.children())
    return out


def wrap_model(
    model: nn.Module,
    strategy: str = "ddp",
    ctx: DistContext | None = None,
    *,
    find_unused_parameters: bool = False,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    sync_module_states: bool = True,
) -> nn.Module:
    """Move ``model`` to this rank's device and wrap it for data-parallel training.

    Args:
        model: the module (policy, value model, or a frozen reference / reward model).
        strategy:
            - ``"ddp"``: ``DistributedDataParallel`` (a full replica per rank; gradients
              all-reduced, averaged, during ``backward``). A frozen model (no parameter requires
              grad) needs no synchronisation and is returned unwrapped.
            - ``"fsdp2"``: ``torch.distributed.fsdp.fully_shard`` on every transformer block and
              then on the root; parameters become ``DTensor`` shards, gathered for each forward,
              gradients reduce-scattered (averaged). Frozen models are sharded too (memory), and
              must then run the same forward passes on every rank.
            - ``"none"``: no wrapping (each rank trains its own copy; only for frozen models or
              manual gradient reduction).
        ctx: the distributed context (default :func:`get_context`).
        find_unused_parameters: DDP's option (needed when some trainable parameters get no
            gradient in a step).
        param_dtype, reduce_dtype: FSDP2 mixed precision (e.g. ``torch.bfloat16`` parameters
            for compute with ``torch.float32`` gradient reduction); None keeps the parameters'
            dtype.
        reshard_after_forward: FSDP2: free the gathered parameters after each forward (saves
            memory, gathers again in backward).
        sync_module_states: first make every rank hold rank 0's parameters and buffers
            (:func:`broadcast_module`) where the wrapper would not: frozen models under
            ``"ddp"`` (returned unwrapped) and every model under ``"fsdp2"`` (``fully_shard``
            keeps each rank's own slice of its own tensors, it does not broadcast). DDP does
            it itself for trainable models.

    Returns:
        The wrapped module (for ``fsdp2`` the same object, its class swapped by
        ``fully_shard``). With one process every strategy returns the model on the device,
        unwrapped, and :attr:`DistContext.loss_scale` is 1.

    Build the optimizer **after** wrapping (FSDP2 replaces the parameters by DTensors) and the
    frozen reference **before** (a deep copy of the plain model).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: expected one of {STRATEGIES}")
    c = _ctx(ctx)
    model = model.to(c.device)
    if strategy == "none" or not c.is_distributed:
        return model
    trainable = any(p.requires_grad for p in model.parameters())
    if strategy == "ddp":
        if not trainable:
            if sync_module_states:
                broadcast_module(model, c)
            return model
        device_ids = [c.device.index] if c.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )
    if not fsdp2_available():
        raise RuntimeError(
            f"strategy='fsdp2' needs torch.distributed.fsdp.fully_shard (torch >= 2.6); this is "
            f"torch {torch.__version__}: use strategy='ddp'"
        )
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"reshard_after_forward": reshard_after_forward}
    if param_dtype is not None or reduce_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=reduce_dtype
        )
    if sync_module_states:
        broadcast_module(model, c)
    for block in _block_modules(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


@torch.no_grad()
def broadcast_module(model: nn.Module, ctx: DistContext | None = None, *, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``model`` on every rank, in place (one
    broadcast per tensor; a no-op for a single process). For plain (not yet sharded) modules.
    """
    c = _ctx(ctx)
    if not c.is_distributed:
        return
    seen: set[int] = set()
    tensors = [*model.parameters(), *model.buffers()]
    for t in tensors:
        if id(t) in seen:  # tied weights: once
            continue
        seen.add(id(t))
        buf = t.detach()
        if buf.device != c.comm_device:
            buf = buf.to(c.comm_device)
        elif not buf.is_contiguous():
            buf = buf.contiguous()
        dist.broadcast(buf, src=src)
        if buf.data_ptr() != t.data_ptr():
            t.copy_(buf)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel wrappers (an FSDP2 module is its own model)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


@contextlib.contextmanager
def no_sync(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Skip the gradient synchronisation of the backward passes in the block (gradient
    accumulation: enable it for every micro-batch but the last of a minibatch).

    DDP: ``model.no_sync()``. FSDP2: ``set_requires_gradient_sync(False)`` (restored after).
    Anything else, or ``enabled=False``: nothing. Gradients are the same with or without it;
    it only saves communication.
    """
    if not enabled:
        yield
        return
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
        return
    if _is_fsdp2(model):
        model.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]
        return
    yield


def scale_loss(loss: torch.Tensor, ctx: DistContext | None = None) -> torch.Tensor:
    """``loss * world_size``: what to call ``backward()`` on for a loss normalised by global
    counts on a DDP- or FSDP2-wrapped model (see the module docstring). The identity for a
    single process."""
    c = _ctx(ctx)
    return loss if not c.is_distributed else loss * c.loss_scale


def gather_full_state_dict(model: nn.Module, *, cpu: bool = True) -> dict[str, torch.Tensor]:
    """A full (unsharded, unwrapped) state dict, for checkpoints written by rank 0.

    DDP: the inner module's state dict (no ``module.`` prefix). FSDP2: gathers every shard
    (``torch.distributed.checkpoint.state_dict.get_model_state_dict`` with
    ``full_state_dict=True``); a **collective**, so every rank must call it; with ``cpu``
    the result is offloaded to the CPU (on rank 0 only; other ranks get an empty dict).
    Other models: their own state dict.
    """
    if _is_fsdp2(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=cpu)
        )
        return {k: v for k, v in full.items() if isinstance(v, torch.Tensor)}
    sd = unwrap_model(model).state_dict()
    if cpu:
        sd = {k: v.detach().cpu() for k, v in sd.items()}
    return sd


def _tied_aliases(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names that are one tensor (tied weights), each group > 1 name."""
    by_id: dict[int, list[str]] = {}
    for name, p in unwrap_model(model).named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def load_full_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool = True
) -> None:
    """Load a full (unsharded, unwrapped) state dict, e.g. a checkpoint written by rank 0.

    DDP / plain models: ``load_state_dict`` of the inner module. FSDP2: every rank passes the
    full dict and keeps its slices (``set_model_state_dict`` with ``full_state_dict=True``; a
    collective). A tied weight saved under one of its names only (safetensors drops the
    duplicates) is filled in under the others.
    """
    if not _is_fsdp2(model):
        unwrap_model(model).load_state_dict(state, strict=strict)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full: dict[str, Any] = dict(state)  # set_model_state_dict replaces the dict's values
    for names in _tied_aliases(model):
        have = [n for n in names if n in full]
        for n in names:
            if n not in full and have:
                full[n] = full[have[0]]
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=strict))


def _optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    names = {id(p): n for n, p in unwrap_model(model).named_parameters()}
    out: list[str] = []
    for g in optimizer.param_groups:
        for p in g["params"]:
            if id(p) not in names:
                raise ValueError(
                    "the optimizer holds a parameter that is not in the model given with it: "
                    "pass the model whose parameters the optimizer steps"
                )
            out.append(names[id(p)])
    return out


def gather_full_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, *, cpu: bool = True
) -> dict[str, Any]:
    """The optimizer's state as a single process would hold it, for checkpoints.

    The result has the layout of ``optimizer.state_dict()`` (states keyed by the parameter's
    position in the param groups), so a checkpoint written under FSDP2 loads into a DDP or
    single-process run and vice versa. DDP / plain models: ``optimizer.state_dict()`` (the
    same on every rank). FSDP2: ``get_optimizer_state_dict(full_state_dict=True)`` — a
    **collective**: every rank calls it; with ``cpu`` only rank 0 receives the tensors (on the
    CPU), the other ranks get an empty dict.
    """
    if not _is_fsdp2(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full: Any = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=cpu)
    )
    if not full or not full.get("param_groups"):
        return {}
    index: dict[str, int] = {}
    groups = []
    for g in full["param_groups"]:
        ids = []
        for fqn in g["params"]:
            index.setdefault(fqn, len(index))
            ids.append(index[fqn])
        groups.append({**g, "params": ids})
    return {"state": {index[k]: v for k, v in full["state"].items()}, "param_groups": groups}


def load_full_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
) -> None:
    """Load what :func:`gather_full_optimizer_state_dict` returned (or a single-process
    ``optimizer.state_dict()``) on every rank. FSDP2: each rank keeps the slices of its
    parameters (``set_optimizer_state_dict``, a collective)."""
    if not _is_fsdp2(model):
        optimizer.load_state_dict(dict(state))
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    order = _optimizer_param_names(model, optimizer)
    n = len(order)
    for g in state["param_groups"]:
        for i in g["params"]:
            if not 0 <= int(i) < n:
                raise ValueError(
                    f"optimizer state names parameter {i} but the optimizer has {n} parameters: "
                    "load a checkpoint of the same model"
                )
    by_name: Any = {
        "state": {order[int(i)]: v for i, v in state["state"].items()},
        "param_groups": [
            {**g, "params": [order[int(i)] for i in g["params"]]} for g in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        model, optimizer, by_name, options=StateDictOptions(full_state_dict=True)
    )
