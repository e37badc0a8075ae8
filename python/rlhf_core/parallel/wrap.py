"""Wrapping models for data-parallel training (DDP or FSDP2), and what a training step needs
from the wrapper: the inner module, skipping gradient sync during accumulation, rank 0's
weights on every rank, and the loss scale that undoes the gradient averaging (the rule is
stated in :mod:`rlhf_core.parallel`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from rlhf_core.parallel.context import DistContext, get_context

__all__ = [
    "STRATEGIES",
    "Strategy",
    "broadcast_module",
    "fsdp2_available",
    "is_fsdp2",
    "no_sync",
    "scale_loss",
    "unwrap_model",
    "wrap_model",
]

Strategy = Literal["ddp", "fsdp2", "none"]
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp2", "none")


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
    c = get_context(ctx)
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
    c = get_context(ctx)
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
    if is_fsdp2(model):
        model.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]
        return
    yield


def scale_loss(loss: torch.Tensor, ctx: DistContext | None = None) -> torch.Tensor:
    """``loss * world_size``: what to call ``backward()`` on for a loss normalised by global
    counts on a DDP- or FSDP2-wrapped model (rule 3 of :mod:`rlhf_core.parallel`). The
    identity for a single process."""
    c = get_context(ctx)
    return loss if not c.is_distributed else loss * c.loss_scale
