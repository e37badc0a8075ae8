"""Full (unsharded, unwrapped) model and optimizer state dicts, for checkpoints that load into
any number of ranks and any wrapping: written by rank 0 from a DDP, FSDP2 or plain model and
read back into any of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from rlhf_core.parallel.wrap import is_fsdp2, unwrap_model

__all__ = [
    "gather_full_optimizer_state_dict",
    "gather_full_state_dict",
    "load_full_optimizer_state_dict",
    "load_full_state_dict",
]


def gather_full_state_dict(model: nn.Module, *, cpu: bool = True) -> dict[str, torch.Tensor]:
    """A full (unsharded, unwrapped) state dict, for checkpoints written by rank 0.

    DDP: the inner module's state dict (no ``module.`` prefix). FSDP2: gathers every shard
    (``torch.distributed.checkpoint.state_dict.get_model_state_dict`` with
    ``full_state_dict=True``); a **collective**, so every rank must call it; with ``cpu``
    the result is offloaded to the CPU (on rank 0 only; other ranks get an empty dict).
    Other models: their own state dict.
    """
    if is_fsdp2(model):
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
    if not is_fsdp2(model):
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
    if not is_fsdp2(model):
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
    if not is_fsdp2(model):
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
