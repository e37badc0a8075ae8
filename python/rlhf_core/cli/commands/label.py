"""``rlhf-core label``: preference pairs from a policy's samples and one judge.

Two completions per prompt are sampled; the judge is either the weighted reward sources
(:func:`rlhf_core.rewards.combine_rewards`, the rule training uses to combine them) turned into
``P(a > b) = sigmoid(beta * (r_a - r_b))``, or an LM asked which answer is better
(:class:`rlhf_core.rewards.JudgeLabeler`). :func:`rlhf_core.rewards.label_pairs` does the
labelling; this module writes the pairs in TRL's columns and a summary.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from rlhf_core._io import write_jsonl
from rlhf_core.cli.loading import (
    device_for,
    load_model,
    load_prompt_table,
    load_scorers,
    load_tokenizer_for,
)
from rlhf_core.cli.outputs import write_json
from rlhf_core.cli.run_configs import LabelConfig
from rlhf_core.generation import generate, opened_backend
from rlhf_core.rewards import DEFAULT_JUDGE_TEMPLATE, JudgeLabeler, combine_rewards, label_pairs

__all__ = ["run_label"]


def _judge(cfg: LabelConfig, tokenizer: Any, device: Any) -> tuple[Any, str]:
    """The judge ``label_pairs`` calls and its description for the summary."""
    if cfg.judge_model is not None:
        jtok = load_tokenizer_for(
            cfg.judge_model, cfg.judge_tokenizer, field_name="judge_model", cfg=cfg
        )
        jm = load_model(cfg.judge_model, jtok, seed=cfg.seed, field_name="judge_model", cfg=cfg)
        judge = JudgeLabeler(
            jm.to(device).eval(),
            jtok,
            template=cfg.judge_template or DEFAULT_JUDGE_TEMPLATE,
            batch_size=cfg.batch_size,
        )
        return judge, f"LM judge {cfg.judge_model}"
    fns, names = load_scorers(cfg, tokenizer, device)

    def scored(prompts: list[str], completions: list[str], **cols: Any) -> np.ndarray:
        out = combine_rewards(fns, cfg.reward_weights, prompts, completions, **cols)
        assert isinstance(out, np.ndarray)
        return out

    return scored, "reward " + " + ".join(names)


def run_label(cfg: LabelConfig) -> int:
    """Writes ``cfg.output`` (default ``run_dir/preferences.jsonl``): rows ``{prompt, chosen,
    rejected, p_chosen, chosen_score, rejected_score, <prompt columns>}``, pairs whose two
    samples are identical dropped; and ``run_dir/label_summary.json`` with the counts."""
    device = device_for(cfg)
    run = pathlib.Path(cfg.run_dir)
    tok = load_tokenizer_for(cfg.model, cfg.tokenizer, cfg=cfg)
    policy = load_model(cfg.model, tok, seed=cfg.seed, cfg=cfg).to(device)
    prompts, columns = load_prompt_table(cfg, tok)
    vllm = cfg.vllm_config(seed=cfg.seed) if cfg.generation_backend == "vllm" else None
    with opened_backend(cfg.generation_backend, policy, tok, vllm=vllm) as backend:
        comp = generate(
            policy,
            tok,
            prompts,
            num_samples=2,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            generation_backend=backend,
        )
    a, b = comp.texts[0::2], comp.texts[1::2]
    judge, kind = _judge(cfg, tok, device)
    rows = label_pairs(
        prompts,
        a,
        b,
        judge,
        sample=cfg.sample_labels,
        beta=cfg.beta,
        seed=cfg.seed,
        **({} if cfg.judge_model is not None else columns),
    )
    identical = sum(r["chosen"] == r["rejected"] for r in rows)
    out_rows = []
    for r in rows:
        if r["chosen"] == r["rejected"]:
            continue
        i = int(r.pop("index"))
        out_rows.append({**r, **{k: v[i] for k, v in columns.items() if k not in r}})
    output = pathlib.Path(cfg.output) if cfg.output else run / "preferences.jsonl"
    write_jsonl(output, out_rows)
    summary = {
        "judge": kind,
        "num_prompts": len(prompts),
        "num_pairs": len(out_rows),
        "dropped_identical": int(identical),
        "dropped_unscorable_or_tied": len(prompts) - len(rows),
        "mean_p_chosen": float(np.mean([r["p_chosen"] for r in out_rows])) if out_rows else None,
        "sample_labels": cfg.sample_labels,
        "output": str(output),
    }
    write_json(run / "label_summary.json", summary)
    print(
        f"label: {len(out_rows)} pairs from {len(prompts)} prompts judged by {kind} -> {output} "
        f"(dropped {identical} identical, {summary['dropped_unscorable_or_tied']} unscorable or "
        "tied)"
    )
    return 0
