"""What a command leaves in its run folder besides the trainer's own files: the final model,
``plots/metrics.png``, JSON summaries, and the closing lines printed to the console.

Under ``torchrun`` only rank 0 writes and prints; every rank calls these functions (saving
an FSDP2-sharded model gathers its full weights, a collective). The final model carries its
model card (:mod:`rlhf_core.model_card`)."""

from __future__ import annotations

import inspect
import json
import math
import os
import pathlib
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlhf_core._io import atomic_write_text, json_safe
from rlhf_core.cli.parser import CLIError
from rlhf_core.models.common import is_peft
from rlhf_core.monitor import read_metrics

__all__ = [
    "save_model",
    "card_fields",
    "plot_metrics",
    "write_json",
    "finish_training",
    "already_finished",
]


def _is_main() -> bool:
    from rlhf_core import parallel as P

    return P.get_context().is_main_process


def save_model(
    model: Any, tokenizer: Any, path: pathlib.Path, card: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """``save_pretrained`` of the model and its tokenizer into ``path`` (replaced whole): a
    causal LM as a ``save_pretrained`` folder, a peft model as a PEFT adapter folder
    (``adapter_config.json`` + adapter weights), a reward model as an
    ``AutoModelForSequenceClassification`` checkpoint whose config names the tokenizer's pad
    token (so that transformers finds the last token of padded inputs); with the model card
    :func:`rlhf_core.model_card.write_model_card` of ``card`` (its keyword arguments, e.g. from
    :func:`card_fields`) as ``README.md``. Under ``torchrun``
    rank 0 writes; an FSDP2-sharded model's full weights are gathered first (every rank must
    call this then)."""
    from rlhf_core import parallel as P
    from rlhf_core.model_card import write_model_card

    full = P.gather_full_state_dict(model) if P.is_fsdp2(model) else None  # a collective
    ctx = P.get_context()
    if ctx.is_main_process:
        kwargs: dict[str, Any] = {}
        if getattr(model, "kind", None) == "reward":
            kwargs["pad_token_id"] = tokenizer.pad_token_id
        elif is_peft(model):
            # the vocabulary is never resized, so the base embeddings need no copy (peft's
            # "auto" would ask the Hub about the base model to find out)
            kwargs["save_embedding_layers"] = False
        if full is not None:
            if "state_dict" not in inspect.signature(model.save_pretrained).parameters:
                raise CLIError(
                    f"cannot save a {type(model).__name__} sharded with parallel='fsdp2' as a "
                    "model folder; train it with parallel='ddp' (its checkpoints hold the full "
                    "weights)"
                )
            kwargs["state_dict"] = full
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), **kwargs)
        tokenizer.save_pretrained(str(tmp))
        if card is not None:
            write_model_card(tmp, **card)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    P.barrier(ctx)
    return path


def card_fields(
    method: str, cfg: Any, result: Any, datasets: Sequence[str | None]
) -> dict[str, Any]:
    """The model card of a command's saved model: the base model ``cfg.model``, ``method``,
    the resolved config, the ``datasets`` given and the result's final metrics."""
    from rlhf_core.config import config_to_dict, dumps_toml

    return {
        "base_model": str(cfg.model),
        "method": method,
        "config_toml": dumps_toml(config_to_dict(cfg)),
        "datasets": [str(d) for d in datasets if d],
        "metrics": dict(result.metrics),
        "title": cfg.run_name or pathlib.Path(cfg.run_dir).resolve().name,
    }


def plot_metrics(
    run_dir: str | os.PathLike[str],
    keys: Sequence[str],
    path: str | os.PathLike[str] | None = None,
) -> pathlib.Path | None:
    """One panel per metric of ``keys`` found in ``run_dir/metrics.jsonl`` (against the step);
    written to ``path`` (default ``run_dir/plots/metrics.png``). Returns the path, or None when
    none of the keys was logged."""
    run = pathlib.Path(run_dir)
    if not (run / "metrics.jsonl").is_file():
        return None
    rows = read_metrics(run)
    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        return None
    cols = min(3, len(present))
    nrows = math.ceil(len(present) / cols)
    fig = Figure(figsize=(4.0 * cols, 2.8 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    for i, k in enumerate(present):
        ax = fig.add_subplot(nrows, cols, i + 1)
        pts = [(r["step"], r[k]) for r in rows if k in r and isinstance(r[k], (int, float))]
        ax.plot([s for s, _ in pts], [v for _, v in pts], "-o", ms=2)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    out = pathlib.Path(path) if path is not None else run / "plots" / "metrics.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out


def write_json(path: pathlib.Path, obj: Mapping[str, Any]) -> pathlib.Path:
    """``obj`` as indented JSON (non-finite numbers as ``null``), replaced atomically."""
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=2) + "\n")


def finish_training(
    name: str, cfg: Any, result: Any, keys: Sequence[str], saved: Mapping[str, pathlib.Path]
) -> int:
    """Plot ``keys``, print the last values of ``keys`` (and ``eval/*``), where each saved model
    went and what the run folder holds; exit status 0."""
    if not _is_main():
        return 0
    run = pathlib.Path(cfg.run_dir)
    plot = plot_metrics(run, keys)
    last = {k: v for k, v in result.metrics.items() if k in keys or k.startswith("eval/")}
    if getattr(result, "stopped_early", False):
        print(f"{name}: stopped early at step {result.step}: {result.stop_reason}")
    if last:
        print(f"{name}: step {result.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    for what, p in saved.items():
        print(f"{name}: {what} saved to {p}")
    extra = [f for f in ("samples.jsonl",) if (run / f).is_file()]
    print(
        f"{name}: run folder {run} (run.json, config.toml, metrics.jsonl, "
        + "".join(f"{f}, " for f in extra)
        + "checkpoints/"
        + (", plots/metrics.png" if plot else "")
        + ")"
    )
    return 0


def already_finished(name: str, result: Any) -> int:
    """Print why nothing was trained (the run had reached ``total_steps``); exit status 0."""
    if _is_main():
        print(f"{name}: {result.message}")
    return 0
