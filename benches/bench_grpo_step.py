"""GRPO step time on CPU with each generation backend, and TRL's ``GRPOTrainer`` on the same
model; the engine/trainer logprob agreement (float32) and the mismatch metrics of a bf16
engine.

The workload of issue 15: a Qwen2-shaped model of about 0.8M parameters (hidden 128, MLP 384,
4 layers, 4 heads of 32 / 2 KV heads, tied embeddings, the built-in character tokenizer,
float32, random weights, saved to a temporary folder that every trainer loads), 4 prompts x 8
samples x 64 new tokens per step, every completion exactly 64 tokens (EOS suppressed in the
model's generation config, which every backend and TRL honour), temperature 1, one optimizer
step per generation round over micro-batches of 8, TRL's defaults for what the bench does not
fix: loss ``dapo`` (token-mean), β = 0 (no reference model on either side), gradient
checkpointing off on both sides (a 0.8M model on the CPU gains nothing from it).

rlhf_core's trainers (``generation_backend`` = vllm, decode_loop, hf) run in rounds, one step
of each per round, so the load of a shared machine falls on all alike; TRL runs its own loop
after them (HF ``generate``: ``use_vllm=False``, its default). The first step of each is not
counted (engine start, allocator warm-up). Step time = the wall clock of one optimizer step
including its generation round; completion tokens/s = 2,048 / median step.

Then the agreement, on the same model without the EOS suppression (an engine reports the
logprobs of what it sampled from, renormalised over the allowed tokens, while the trainer's are
over the whole vocabulary: with EOS banned they differ by −log(1 − p_EOS) per token, about 0.01
nats here): a float32 vLLM run's ``sampling/sampling_logp_difference/{max,mean}`` at every
step (step 0: the engine as started; later steps: after a sync each), and a bf16 engine against
the float32 trainer, its mismatch metrics per step.

Usage (in the vLLM environment; TRL is in its requirements)::

    make bench-grpo-step
    # = VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=1 .venv-vllm/bin/python benches/bench_grpo_step.py
    .venv-vllm/bin/python benches/bench_grpo_step.py --backends hf --no-trl --steps 2   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPTS_PER_STEP = 4
SAMPLES = 8
NEW_TOKENS = 64
MICRO = 8
LR = 1e-5
MODEL = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
             tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-6)  # fmt: skip
AGREEMENT = [
    "sampling/sampling_logp_difference/max",
    "sampling/sampling_logp_difference/mean",
    "sampling/importance_sampling_ratio/min",
    "sampling/importance_sampling_ratio/mean",
    "sampling/importance_sampling_ratio/max",
    "rollout_corr/kl",
    "rollout_corr/k3_kl",
    "rollout_corr/rollout_is_oob_ratio",
]


def build_model_folder(folder: Path, suppress_eos: bool = True) -> tuple[Any, int]:
    """The Qwen2-shaped model (seed 0) and the built-in tokenizer, saved to ``folder``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlhf_core.models import load_tokenizer

    tok = load_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         use_sliding_window=False, attention_dropout=0.0, **MODEL)  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id, gc.bos_token_id = (
        tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)  # fmt: skip
    if suppress_eos:
        gc.suppress_tokens = [tok.eos_token_id]  # every completion is NEW_TOKENS long
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return tok, sum(p.numel() for p in model.parameters())


def prompts(n: int) -> list[str]:
    rng = np.random.default_rng(1)
    words = ["what", "is", "the", "sum", "of", "cat", "sea", "poem", "def", "x", "+", "="]
    return [" ".join(rng.choice(words, size=6)) + f" {i}" for i in range(n)]


def even_chars(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """Cheap reward: the share of characters with an even code point."""
    return [sum(ord(c) % 2 == 0 for c in str(t)) / max(len(str(t)), 1) for t in completions]


def our_trainer(folder: Path, tok: Any, run_dir: str, backend: str, steps: int,
                **extra: Any) -> Any:  # fmt: skip
    from rlhf_core.models import load_policy
    from rlhf_core.trainers import GRPOConfig, GRPOTrainer

    cfg = GRPOConfig(
        run_dir=run_dir, seed=0, total_steps=steps, learning_rate=LR, device="cpu",
        progress_bar=False, tensorboard=False, num_samples=SAMPLES,
        rollout_batch_size=PROMPTS_PER_STEP * SAMPLES, max_new_tokens=NEW_TOKENS,
        micro_batch_size=MICRO, temperature=1.0, loss_type="dapo", kl_coef=0.0,
        track_kl=False, generation_backend=backend, vllm_max_model_length=256, **extra,
    )  # fmt: skip
    policy = load_policy(str(folder), dtype="float32", device="cpu")
    return GRPOTrainer(cfg, policy, tok, prompts(PROMPTS_PER_STEP * steps), even_chars)


def step(trainer: Any, i: int, fixed_length: bool = True) -> tuple[float, dict[str, float]]:
    trainer.timer.reset()
    t0 = time.perf_counter()
    metrics = dict(trainer.train_step(i))
    dt = time.perf_counter() - t0
    metrics.update(trainer.timer.summary())
    trainer.global_step = i + 1
    length = metrics["response_length/mean"]
    assert length == NEW_TOKENS or not fixed_length, f"completions of {length} tokens"
    return dt, metrics


def run_ours(folder: Path, tok: Any, backends: list[str], steps: int,
             warmup: int) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {b: our_trainer(folder, tok, f"{tmp}/{b}", b, steps + warmup)
                    for b in backends}  # fmt: skip
        times: dict[str, list[float]] = {b: [] for b in backends}
        rows: dict[str, list[dict[str, float]]] = {b: [] for b in backends}
        for i in range(steps + warmup):
            for b, t in trainers.items():
                dt, m = step(t, i)
                times[b].append(dt)
                rows[b].append(m)
        for b, t in trainers.items():
            t.close_backend()
            ts = times[b][warmup:]
            med = statistics.median(ts)
            phases = sorted({k for r in rows[b] for k in r if k.startswith("time/")})
            out[b] = {
                "median_step_s": med,
                "min_step_s": min(ts),
                "completion_tokens_per_s": PROMPTS_PER_STEP * SAMPLES * NEW_TOKENS / med,
                "first_step_s": times[b][0],
                "phases_median_s": {
                    k.removeprefix("time/"): statistics.median(r.get(k, 0.0) for r in
                                                               rows[b][warmup:])
                    for k in phases
                },  # fmt: skip
                "agreement": [{k: r[k] for k in AGREEMENT if k in r} for r in rows[b]],
            }
    return out


def run_trl(folder: Path, tok: Any, steps: int, warmup: int) -> dict[str, Any]:
    """TRL's GRPOTrainer (HF generate), step = on_step_begin -> on_step_end."""
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    class Clock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.t0 = 0.0
            self.times: list[float] = []

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.times.append(time.perf_counter() - self.t0)

    total = steps + warmup
    with tempfile.TemporaryDirectory() as out_dir:
        args = trl.GRPOConfig(
            output_dir=out_dir, max_steps=total, per_device_train_batch_size=MICRO,
            gradient_accumulation_steps=PROMPTS_PER_STEP * SAMPLES // MICRO,
            num_generations=SAMPLES, max_completion_length=NEW_TOKENS, beta=0.0,
            learning_rate=LR, loss_type="dapo", temperature=1.0,
            generation_kwargs={"suppress_tokens": [tok.eos_token_id]},
            gradient_checkpointing=False, use_cpu=True, bf16=False, logging_steps=10**6,
            save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        )  # fmt: skip
        clock = Clock()
        trainer = trl.GRPOTrainer(
            model=str(folder), reward_funcs=even_chars, args=args,
            train_dataset=Dataset.from_dict({"prompt": prompts(PROMPTS_PER_STEP * total)}),
            processing_class=tok, callbacks=[clock],
        )  # fmt: skip
        trainer.train()
    ts = clock.times[warmup:]
    med = statistics.median(ts)
    return {"version": trl.__version__, "median_step_s": med, "min_step_s": min(ts),
            "completion_tokens_per_s": PROMPTS_PER_STEP * SAMPLES * NEW_TOKENS / med,
            "first_step_s": clock.times[0]}  # fmt: skip


def run_agreement(folder: Path, tok: Any, steps: int, dtype: str) -> list[dict[str, float]]:
    """A vLLM engine of ``dtype`` against the float32 trainer (synced every step): the
    mismatch metrics per step."""
    with tempfile.TemporaryDirectory() as tmp:
        t = our_trainer(folder, tok, tmp, "vllm", steps, vllm_dtype=dtype)
        rows = [step(t, i, fixed_length=False)[1] for i in range(steps)]
        t.close_backend()
    return [{k: r[k] for k in AGREEMENT if k in r} for r in rows]


def report(res: dict[str, Any]) -> str:
    lines = [f"machine: {res['machine']}; torch threads {res['threads']}; load average "
             f"{res['load_avg_start']:.1f} -> {res['load_avg_end']:.1f}",
             f"model: {res['model']}; {res['workload']}", "",
             "| trainer | generation | median step (s) | fastest (s) | completion tokens/s |"
             " first step (s) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for b, r in res["ours"].items():
        lines.append(f"| rlhf_core | {b} | {r['median_step_s']:.3f} | {r['min_step_s']:.3f} | "
                     f"{r['completion_tokens_per_s']:,.0f} | {r['first_step_s']:.2f} |")  # fmt: skip
    if res.get("trl"):
        r = res["trl"]
        lines.append(f"| TRL {r['version']} | HF generate | {r['median_step_s']:.3f} | "
                     f"{r['min_step_s']:.3f} | {r['completion_tokens_per_s']:,.0f} | "
                     f"{r['first_step_s']:.2f} |")  # fmt: skip
    if res.get("trl_error"):
        lines.append(f"TRL not run: {res['trl_error']}")
    for b, r in res["ours"].items():
        ph = ", ".join(f"{k} {v:.3f}" for k, v in r["phases_median_s"].items())
        lines.append(f"{b} phases (median s): {ph}")
    for name, rows in (("float32 engine", res.get("float32")), ("bf16 engine", res.get("bf16"))):
        if not rows:
            continue
        lines.append(f"\n{name}: " + "; ".join(
            f"step {i}: max {r['sampling/sampling_logp_difference/max']:.2e} mean "
            f"{r['sampling/sampling_logp_difference/mean']:.2e} k3 "
            f"{r['rollout_corr/k3_kl']:.2e} IS [{r['sampling/importance_sampling_ratio/min']:.3f},"
            f" {r['sampling/importance_sampling_ratio/max']:.3f}] oob "
            f"{r.get('rollout_corr/rollout_is_oob_ratio', 0.0):.3f}"
            for i, r in enumerate(rows)))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="vllm,decode_loop,hf")
    p.add_argument("--steps", type=int, default=5, help="measured steps per trainer")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-trl", action="store_true")
    p.add_argument("--agreement-steps", type=int, default=4,
                   help="steps of each agreement run (float32 and bf16 engines); 0 = none")  # fmt: skip
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # before vLLM pins it
    import transformers

    from rlhf_core.trainers import GRPOConfig  # noqa: F401 - fail early without the package

    transformers.utils.logging.disable_progress_bar()
    res: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_avg_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        tok, n = build_model_folder(folder)
        res["model"] = f"Qwen2-shaped, {n:,} parameters, float32"
        res["model_params"] = n
        res["workload"] = (f"{PROMPTS_PER_STEP} prompts x {SAMPLES} samples x {NEW_TOKENS} "
                           f"tokens; {args.steps} measured steps after {args.warmup}")  # fmt: skip
        if "vllm" in backends:
            import vllm

            res["vllm"] = vllm.__version__
        res["ours"] = run_ours(folder, tok, backends, args.steps, args.warmup)
        if not args.no_trl:
            try:
                res["trl"] = run_trl(folder, tok, args.steps, args.warmup)
            except ImportError as exc:
                res["trl_error"] = f"trl is not importable ({exc})"
        if "vllm" in backends and args.agreement_steps:
            plain = Path(tmp) / "plain"
            build_model_folder(plain, suppress_eos=False)
            for dtype in ("float32", "bfloat16"):
                key = "bf16" if dtype == "bfloat16" else dtype
                res[key] = run_agreement(plain, tok, args.agreement_steps, dtype)
    res["load_avg_end"] = os.getloadavg()[0]
    print(report(res))
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
