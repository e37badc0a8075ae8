"""End-to-end GRPO step time: TRL's ``GRPOTrainer`` against rlhf_core's ``GRPOTrainer``.

Both trainers run one after the other in this process on the same device with the same
workload (the one of the GPU-speed issue):

- a Qwen2-0.5B-shaped model (hidden 896, 24 layers, 14 heads / 2 KV heads, MLP 4864, vocabulary
  151,936, tied embeddings) built from its config with random weights, in bf16, saved to a
  temporary folder that both trainers load (nothing is downloaded);
- a word-level tokenizer built here (one token per word ``w<i>``, as many words as the model's
  vocabulary);
- 8 prompts × 8 samples × 256 new tokens per step, every completion exactly 256 tokens long (the
  EOS token is suppressed in the model's generation config, which both trainers' ``generate``
  calls honour), β = 0.04 (k3 KL in the loss), one optimizer step per generation round,
  micro-batches of 8 sequences, learning rate 1e-6, TRL's ``loss_type`` ("dapo", token-mean)
  on both sides, temperature 1;
- a cheap reward function (fraction of even-numbered words), so scoring is not the bottleneck.

It prints the median step time and completion tokens per second of each trainer, their ratio
(the target: rlhf_core's step at most 1/3 of TRL's) and rlhf_core's per-phase breakdown from the
trainer's ``time/*`` metrics (generation / scoring / bookkeeping / training; the target:
bookkeeping under 2 % of the step). ``--json PATH`` also writes everything to a JSON file.

Usage::

    python benches/e2e_grpo.py                      # GPU workload, both trainers
    python benches/e2e_grpo.py --no-trl             # rlhf_core only
    python benches/e2e_grpo.py --tiny --steps 2 --no-trl   # a CPU-sized smoke run (tests)
    python benches/e2e_grpo.py --memory-preset              # peak memory with TRL's choices

``--memory-preset`` runs both trainers with TRL's memory choices: β = 0 (TRL builds no
reference model; rlhf_core neither, with ``track_kl=False``) and gradient checkpointing on both
sides (TRL's default), which is what ``configs/gpu/grpo_gpu.toml`` sets; the peak GPU memory
(``torch.cuda.max_memory_allocated``) of each is in the report.

The first ``--warmup`` steps of each trainer (compilation, allocator warm-up) are not counted.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------
# workload


@dataclass
class Workload:
    """Everything both trainers are given."""

    prompts_per_step: int = 8
    num_samples: int = 8
    max_new_tokens: int = 256
    prompt_words: int = 16
    beta: float = 0.04
    learning_rate: float = 1e-6
    micro_batch_size: int = 8
    loss_type: str = "dapo"
    dtype: str = "bfloat16"
    model: dict[str, Any] = field(
        default_factory=lambda: {
            "vocab_size": 151936,
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
        }
    )

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.num_samples

    @property
    def completion_tokens_per_step(self) -> int:
        return self.completions_per_step * self.max_new_tokens


def tiny_workload() -> Workload:
    """A CPU-sized version: 2 prompts × 4 samples × 8 tokens on a 2-layer model, float32."""
    return Workload(
        prompts_per_step=2,
        num_samples=4,
        max_new_tokens=8,
        prompt_words=6,
        micro_batch_size=4,
        dtype="float32",
        model={
            "vocab_size": 512,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
        },
    )


SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def build_tokenizer(vocab_size: int) -> Any:
    """A word-level fast tokenizer: specials ``<pad> <eos> <bos> <unk>`` (ids 0-3) and words
    ``w4 .. w{vocab_size-1}``; whitespace splitting, decoding joins words with spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), vocab_size)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )


def build_model_folder(
    work: Workload, folder: Path, device: torch.device, seed: int = 0
) -> tuple[Any, int]:
    """Build the random-init Qwen2 model from its config on ``device`` in the workload's dtype,
    suppress EOS in its generation config (fixed-length completions), save it with the
    tokenizer to ``folder``. Returns ``(tokenizer, number of parameters)``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer(int(work.model["vocab_size"]))
    dtype = getattr(torch, work.dtype)
    config = Qwen2Config(
        **work.model,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        use_sliding_window=False,
        attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.suppress_tokens = [tok.eos_token_id]  # every completion full length
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    n_params = sum(p.numel() for p in model.parameters())
    del model
    _free(device)
    return tok, n_params


def make_prompts(work: Workload, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    hi = int(work.model["vocab_size"])
    return [
        " ".join(f"w{w}" for w in rng.integers(len(SPECIALS), hi, size=work.prompt_words))
        for _ in range(n)
    ]


def even_words(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """Reward: fraction of the completion's words ``w<i>`` with an even ``i`` (cheap; about
    Binomial(n, 1/2) / n for a random policy, so it varies within every group)."""
    out = []
    for c in completions:
        words = str(c).split()
        even = sum(1 for w in words if w[1:].isdigit() and int(w[1:]) % 2 == 0)
        out.append(even / len(words) if words else 0.0)
    return out


# ---------------------------------------------------------------------------------------------
# timing helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def _summary(step_times: list[float], work: Workload) -> dict[str, Any]:
    med = statistics.median(step_times)
    return {
        "step_times_s": step_times,
        "median_step_s": med,
        "completion_tokens_per_s": work.completion_tokens_per_step / med,
    }


# ---------------------------------------------------------------------------------------------
# the two trainers


def run_trl(
    work: Workload, folder: Path, tok: Any, device: torch.device, steps: int, warmup: int,
    gradient_checkpointing: bool,
) -> dict[str, Any]:  # fmt: skip
    """TRL's GRPOTrainer on the saved model; step time = on_step_begin -> on_step_end (one
    optimizer step, which includes the generation round of its 64 completions)."""
    import trl
    from datasets import Dataset
    from datasets.table import InMemoryTable
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.begin = 0.0
            self.times: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            _sync(device)
            self.begin = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            _sync(device)
            self.times.append(time.perf_counter() - self.begin)

    total = steps + warmup
    prompts = make_prompts(work, work.prompts_per_step * total, seed=1)
    on_gpu = device.type == "cuda"
    with tempfile.TemporaryDirectory() as out_dir:
        args = trl.GRPOConfig(
            output_dir=out_dir,
            max_steps=total,
            per_device_train_batch_size=work.micro_batch_size,
            gradient_accumulation_steps=work.completions_per_step // work.micro_batch_size,
            num_generations=work.num_samples,
            max_completion_length=work.max_new_tokens,
            beta=work.beta,
            learning_rate=work.learning_rate,
            loss_type=work.loss_type,
            temperature=1.0,
            generation_kwargs={"suppress_tokens": [tok.eos_token_id]},
            model_init_kwargs={"dtype": work.dtype},
            gradient_checkpointing=gradient_checkpointing,
            bf16=on_gpu and work.dtype == "bfloat16",
            use_cpu=not on_gpu,
            logging_steps=10**6,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
        )
        clock = StepClock()
        trainer = trl.GRPOTrainer(
            model=str(folder),
            reward_funcs=even_words,
            args=args,
            # an explicit fingerprint: hashing the table with dill fails for some pyarrow /
            # dill pairs ("Can't pickle MonthDayNano"), and nothing here is cached anyway
            train_dataset=Dataset(
                InMemoryTable.from_pydict({"prompt": prompts}), fingerprint="e2e-grpo-prompts"
            ),
            processing_class=tok,
            callbacks=[clock],
        )
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        trainer.train()
        peak = _peak_gib(device)
        del trainer
    _free(device)
    if len(clock.times) != total:
        raise RuntimeError(f"TRL ran {len(clock.times)} optimizer steps, expected {total}")
    out = _summary(clock.times[warmup:], work)
    out.update(
        version=trl.__version__,
        peak_memory_gib=peak,
        gradient_checkpointing=gradient_checkpointing,
    )
    return out


def run_ours(
    work: Workload, folder: Path, tok: Any, device: torch.device, steps: int, warmup: int,
    gradient_checkpointing: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """rlhf_core's GRPOTrainer on the saved model; step time = wall clock of ``train_step``
    (generation, scoring, bookkeeping, training and the scheduler step), phases from the
    trainer's ``time/*`` metrics."""
    from rlhf_core import generation
    from rlhf_core.models import load_policy
    from rlhf_core.trainers import GRPOConfig, GRPOTrainer

    backends_before = generation.BACKENDS_USED.copy()

    total = steps + warmup
    on_gpu = device.type == "cuda"
    policy = load_policy(str(folder), dtype=work.dtype, device=device)
    prompts = make_prompts(work, work.prompts_per_step * total, seed=1)
    with tempfile.TemporaryDirectory() as run_dir:
        cfg_fields: dict[str, Any] = dict(
            run_dir=run_dir,
            seed=0,
            total_steps=total,
            learning_rate=work.learning_rate,
            device=str(device),
            bf16=on_gpu,
            progress_bar=False,
            tensorboard=False,
            num_samples=work.num_samples,
            rollout_batch_size=work.completions_per_step,
            max_new_tokens=work.max_new_tokens,
            micro_batch_size=work.micro_batch_size,
            temperature=1.0,
            kl_coef=work.beta,
            kl_estimator="k3",
            loss_type=work.loss_type,
            gradient_checkpointing=gradient_checkpointing,
        )
        known = set(GRPOConfig.__dataclass_fields__)
        if "track_kl" in known and work.beta == 0:  # no reference model, as TRL with beta 0
            cfg_fields["track_kl"] = False
        if "fast_generation" in known:  # the static-cache / compiled decode path, on CUDA
            cfg_fields["fast_generation"] = on_gpu
        config = GRPOConfig(**cfg_fields)
        trainer = GRPOTrainer(config, policy, tok, prompts, even_words)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        times: list[float] = []
        phases: list[dict[str, float]] = []
        last: dict[str, float] = {}
        for step in range(total):
            trainer.timer.reset()
            _sync(device)
            t0 = time.perf_counter()
            metrics = dict(trainer.train_step(step))
            _sync(device)
            times.append(time.perf_counter() - t0)
            metrics.update(trainer.timer.summary())
            trainer.global_step = step + 1
            phases.append({k: float(v) for k, v in metrics.items() if k.startswith("time/")})
            last = metrics
        peak = _peak_gib(device)
        del trainer, policy
    _free(device)
    out = _summary(times[warmup:], work)
    keys = sorted({k for p in phases for k in p})
    out["phases_median_s"] = {
        k.removeprefix("time/"): statistics.median(p.get(k, 0.0) for p in phases[warmup:])
        for k in keys
    }
    out["peak_memory_gib"] = peak
    out["gradient_checkpointing"] = gradient_checkpointing
    out["reference_model"] = bool(cfg_fields.get("track_kl", True)) or work.beta > 0
    out["fast_generation"] = bool(cfg_fields.get("fast_generation", False))
    out["generation_backends"] = dict(generation.BACKENDS_USED - backends_before)
    out["response_length_mean"] = float(last.get("response_length/mean", math.nan))
    out["loss_finite"] = all(
        math.isfinite(float(v))
        for k, v in last.items()
        if "loss" in k and not k.startswith("time/")
    )
    return out


# ---------------------------------------------------------------------------------------------
# report


def step_ratio(res: dict[str, Any]) -> float | None:
    """rlhf_core's median step time over TRL's (the target: at most 1/3); None unless both
    ran."""
    if not (res.get("trl") and res.get("ours")):
        return None
    return float(res["ours"]["median_step_s"] / res["trl"]["median_step_s"])


def format_report(res: dict[str, Any]) -> str:
    work = res["workload"]
    lines = [
        f"device: {res['device_name']}  torch {res['torch']}  transformers {res['transformers']}",
        f"model: Qwen2-shaped, {res['model_params'] / 1e6:.1f}M params, {work['dtype']}; "
        f"{work['prompts_per_step']} prompts x {work['num_samples']} samples x "
        f"{work['max_new_tokens']} new tokens (fixed length), beta={work['beta']}, "
        f"loss_type={work['loss_type']}",
        "",
        f"{'trainer':<22}{'median step (s)':>17}{'completion tok/s':>18}{'peak GiB':>10}",
    ]
    rows = []
    if res.get("trl"):
        rows.append((f"TRL {res['trl']['version']}", res["trl"]))
    if res.get("ours"):
        rows.append(("rlhf_core", res["ours"]))
    for name, r in rows:
        peak = "-" if r.get("peak_memory_gib") is None else f"{r['peak_memory_gib']:.1f}"
        lines.append(
            f"{name:<22}{r['median_step_s']:>17.3f}{r['completion_tokens_per_s']:>18.0f}{peak:>10}"
        )
    if res.get("trl_error"):
        lines.append(f"TRL not run: {res['trl_error']}")
    if res.get("ratio") is not None:
        verdict = "meets" if res["ratio"] <= 1 / 3 else "misses"
        lines.append(
            f"ratio rlhf_core / TRL step time: {res['ratio']:.3f} ({verdict} the target <= 0.333)"
        )
    ours = res.get("ours")
    if ours:
        step = ours["median_step_s"]
        lines.append("")
        lines.append(
            f"rlhf_core phases (median s, share of the step; fast_generation="
            f"{ours['fast_generation']}; generate calls by path: "
            f"{ours.get('generation_backends') or '-'}):"
        )
        for name, sec in ours["phases_median_s"].items():
            lines.append(f"  {name:<14}{sec:>10.4f} s {100 * sec / step:>7.2f} %")
        book = ours["phases_median_s"].get("bookkeeping")
        if book is not None:
            share = 100 * book / step
            verdict = "meets" if share < 2 else "misses"
            lines.append(f"  bookkeeping share {share:.2f} % ({verdict} the target < 2 %)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="measured steps per trainer")
    p.add_argument("--warmup", type=int, default=1, help="uncounted first steps per trainer")
    p.add_argument("--tiny", action="store_true", help="CPU-sized model and workload")
    p.add_argument("--no-trl", action="store_true", help="skip TRL's trainer")
    p.add_argument("--no-ours", action="store_true", help="skip rlhf_core's trainer")
    p.add_argument(
        "--trl-gradient-checkpointing",
        choices=("on", "off"),
        default="on",
        help="TRL's gradient_checkpointing (TRL's default: on)",
    )
    p.add_argument(
        "--memory-preset",
        action="store_true",
        help="TRL's memory choices on both sides: beta 0 (no reference model) and gradient "
        "checkpointing on (configs/gpu/grpo_gpu.toml)",
    )
    p.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda'")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    work = tiny_workload() if args.tiny else Workload()
    if args.memory_preset:
        work.beta = 0.0
        args.trl_gradient_checkpointing = "on"
    if device.type == "cpu" and not args.tiny:
        print("note: the full workload on a CPU is very slow; use --tiny", file=sys.stderr)
    if device.type == "cpu" and work.dtype == "bfloat16":
        work.dtype = "float32"

    import transformers

    transformers.utils.logging.disable_progress_bar()  # keep the report readable
    res: dict[str, Any] = {
        "workload": asdict(work),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "steps": args.steps,
        "warmup": args.warmup,
        "trl": None,
        "ours": None,
        "ratio": None,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        tok, n_params = build_model_folder(work, folder, device)
        res["model_params"] = n_params
        if not args.no_trl:
            try:
                res["trl"] = run_trl(
                    work, folder, tok, device, args.steps, args.warmup,
                    args.trl_gradient_checkpointing == "on",
                )  # fmt: skip
            except ImportError as exc:
                res["trl_error"] = f"trl is not importable ({exc})"
            except Exception as exc:  # noqa: BLE001 - report and still measure ours
                res["trl_error"] = f"{type(exc).__name__}: {exc}"
        if not args.no_ours:
            res["ours"] = run_ours(work, folder, tok, device, args.steps, args.warmup,
                                   gradient_checkpointing=args.memory_preset)  # fmt: skip
    res["ratio"] = step_ratio(res)
    print(format_report(res))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
