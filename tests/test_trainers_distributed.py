"""The trainers under ``torchrun``: 2 gloo CPU processes equal one process on the same global batch.

One launch of ``python -m torch.distributed.run --standalone --nproc-per-node 2`` runs this file
as a worker. For every scenario below the worker builds the trainer exactly as a single
process would (same config, same tiny model from the same seed), trains it, and rank 0 writes
the metrics it logged (``metrics.jsonl``) and the trained weights; rank 1 writes its own
weights too (a DDP replica must equal rank 0's bit for bit). The tests then run the same
scenario in this process (one process, nothing distributed) and compare: every logged metric
(``time/*`` excepted) to float tolerance, every weight to ``WEIGHT_ATOL``.

Why the two runs see the same data: every rank draws the same global prompts / examples /
pairs from the same seeded sampler and keeps its block (``shard_indices``); the on-policy
scenarios set ``per_prompt_seeds=True``, so each prompt's completions are sampled in their own
``generate`` call seeded by the prompt's position in the step, whichever rank draws them.
Rollouts are then identical token for token; what differs is only how rows are batched
(2 ranks × half the rows), which changes float32 rounding and nothing else. Every optimizer
step sees the whole rollout (``minibatch_size`` = rollout size): with smaller minibatches each
rank shuffles its own rows, a valid but different split (``docs/scaling.md``).

Covered: GRPO (KL in the loss, 2 epochs, micro-batches), GRPO with ``scale_rewards="batch"``
(the batch std over ranks), REINFORCE++ (token whitening over ranks), REINFORCE++-baseline
(per-sequence advantages whitened over ranks), PPO (value model, GAE,
global whitening, adaptive KL), SFT, DPO (with an uneven held-out split), best-of-N (ranks
select different numbers of winners), GRPO under FSDP2, and resume under torchrun: a DDP run
stopped after step 1 and resumed by a new trainer (every rank loads) equals the uninterrupted
run, and an FSDP2 checkpoint (full states gathered to rank 0) resumes in one process; periodic
evaluation and logged samples (gathered from every rank), and a callback's stop on one rank
stopping both.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

WORLD = 2
LAUNCH_TIMEOUT_S = 240
WEIGHT_ATOL = 2e-5
METRIC_REL = 1e-4
METRIC_ABS = 1e-5

PROMPTS = ["Q:", "A:", "x=", "y="]
COMMON = dict(
    learning_rate=1e-3,
    weight_decay=0.0,
    progress_bar=False,
    tensorboard=False,
    device="cpu",
)
RL = dict(COMMON, max_new_tokens=6, per_prompt_seeds=True)


def digit_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """Fraction of digits in the completion: dense, so groups have some variance."""
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]


def inf_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """As digit_reward, but infinite for the prompt "x=", which only one rank holds."""
    return [
        float("inf") if p.strip() == "x=" else v
        for p, v in zip(prompts, digit_reward(prompts, completions), strict=True)
    ]


def partial_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
    """As digit_reward, but completions of the prompt "x=" are unscorable: the rank that holds
    it selects fewer best-of-N winners than the other."""
    return [
        None if p.strip() == "x=" else v
        for p, v in zip(prompts, digit_reward(prompts, completions), strict=True)
    ]


def _tok() -> Any:
    from rlhf_core.models import load_tokenizer

    return load_tokenizer()


def _policy(seed: int = 0) -> Any:
    from rlhf_core.models import build_builtin_policy

    return build_builtin_policy(_tok(), seed=seed)


def _grpo(run: Path, reward: Callable[..., Any] = digit_reward, **kw: Any) -> Any:
    from rlhf_core.trainers import GRPOConfig, GRPOTrainer

    cfg = GRPOConfig(run_dir=str(run), **{**RL, **kw})
    return GRPOTrainer(cfg, _policy(), _tok(), PROMPTS, reward)


def _reinforce_pp(run: Path) -> Any:
    from rlhf_core.trainers import ReinforcePPConfig, ReinforcePPTrainer

    cfg = ReinforcePPConfig(
        run_dir=str(run), total_steps=1, rollout_batch_size=4, num_samples=2, **RL
    )
    return ReinforcePPTrainer(cfg, _policy(), _tok(), PROMPTS, digit_reward)


def _ppo(run: Path) -> Any:
    from rlhf_core.models import RewardModel
    from rlhf_core.trainers import PPOConfig, PPOTrainer

    cfg = PPOConfig(
        run_dir=str(run),
        total_steps=2,
        rollout_batch_size=4,
        ppo_epochs=2,
        micro_batch_size=1,
        kl_target=1.0,
        **RL,
    )
    rm = RewardModel.from_policy(_policy(1))
    return PPOTrainer(cfg, _policy(), _tok(), PROMPTS, [rm, digit_reward])


def _ppo_fsdp2(run: Path) -> Any:
    from rlhf_core.models import RewardModel
    from rlhf_core.trainers import PPOConfig, PPOTrainer

    cfg = PPOConfig(run_dir=str(run), total_steps=1, rollout_batch_size=4, parallel="fsdp2", **RL)
    rm = RewardModel.from_policy(_policy(1))
    return PPOTrainer(cfg, _policy(), _tok(), PROMPTS, [rm, digit_reward])


def _reward(run: Path) -> Any:
    from rlhf_core.models import RewardModel
    from rlhf_core.testing.trainers import count_pairs
    from rlhf_core.trainers import RewardConfig, RewardTrainer

    cfg = RewardConfig(
        run_dir=str(run),
        total_steps=2,
        batch_size=4,
        micro_batch_size=1,
        eval_fraction=0.25,  # 3 held-out pairs: 2 and 1 per rank
        center_coef=0.01,
        **COMMON,
    )
    return RewardTrainer(cfg, RewardModel.from_policy(_policy()), _tok(), count_pairs(12))


def _sft(run: Path, batch_size: int = 4) -> Any:
    from rlhf_core.trainers import SFTConfig, SFTTrainer

    examples = [("Q:", "1+1=2"), ("A:", "yes"), ("x=", "12"), ("y=", "a b c"), ("Q:", "no")]
    cfg = SFTConfig(
        run_dir=str(run), total_steps=2, batch_size=batch_size, micro_batch_size=1, **COMMON
    )
    return SFTTrainer(cfg, _policy(), _tok(), examples)


def _dpo(run: Path, parallel: str = "ddp") -> Any:
    from rlhf_core.testing.trainers import count_pairs
    from rlhf_core.trainers import DPOConfig, DPOTrainer

    # 12 pairs, 3 held out: the ranks evaluate 2 and 1 pairs, one per forward (under FSDP2
    # rank 1 runs an extra, uncounted forward to match rank 0's two)
    cfg = DPOConfig(
        run_dir=str(run),
        total_steps=2,
        batch_size=4,
        eval_fraction=0.25,
        eval_batch_size=1,
        parallel=parallel,
        **COMMON,
    )
    return DPOTrainer(cfg, _policy(), _tok(), count_pairs(12))


def _best_of_n(run: Path) -> Any:
    from rlhf_core.trainers import BestOfNConfig, BestOfNTrainer

    cfg = BestOfNConfig(
        run_dir=str(run),
        total_steps=1,
        rollout_batch_size=16,
        num_samples=4,
        micro_batch_size=1,
        **RL,
    )
    return BestOfNTrainer(cfg, _policy(), _tok(), PROMPTS, partial_reward)


def _grpo_main(run: Path) -> Any:
    return _grpo(
        run,
        total_steps=2,
        rollout_batch_size=8,
        num_samples=4,
        ppo_epochs=2,
        micro_batch_size=2,
        kl_coef=0.05,
        entropy_coef=0.01,
    )


def _grpo_fsdp2(run: Path) -> Any:
    return _grpo(
        run,
        total_steps=2,
        rollout_batch_size=8,
        num_samples=4,
        micro_batch_size=2,
        kl_coef=0.05,
        parallel="fsdp2",
    )


class _StopOnRank1:
    """Stops training after step 1 on rank 1 only (on the only rank of one process): rank 0
    must stop too, having been told (every rank takes the same branch)."""

    def on_step_end(self, state: Any, control: Any) -> None:
        if state.step == 1 and (state.world_size == 1 or state.trainer.dist.rank == 1):
            control.stop("rank 1 stopped")


def _grpo_eval_samples(run: Path) -> Any:
    """Evaluation on held-out prompts (2: one per rank) and logged samples (gathered from both
    ranks in rank order), stopped by a callback on rank 1 after step 1, which is not a logging
    step (logging_steps=2): every rank must agree to log it (a stop is logged) before the
    samples are gathered."""
    from rlhf_core.trainers import GRPOConfig, GRPOTrainer

    cfg = GRPOConfig(run_dir=str(run), total_steps=2, rollout_batch_size=8, num_samples=4,
                     eval_steps=1, num_generations_eval=2, log_completions=True,
                     logging_steps=2, num_completions_to_print=0, **RL)  # fmt: skip
    return GRPOTrainer(cfg, _policy(), _tok(), PROMPTS, digit_reward,
                       eval_dataset=[{"prompt": "1+", "answer": "1"},
                                     {"prompt": "2+", "answer": "2"}],
                       callbacks=[_StopOnRank1()])  # fmt: skip


#: name -> (builder, stop_at_step of a first run, or None). With a stop step, the worker trains
#: one trainer to it, then a new trainer resumes from the checkpoint in the same run folder.
SCENARIOS: dict[str, tuple[Callable[[Path], Any], int | None]] = {
    "grpo": (_grpo_main, None),
    "grpo_batch_scale": (
        lambda run: _grpo(
            run,
            total_steps=1,
            rollout_batch_size=8,
            num_samples=4,
            loss_type="dapo",
            scale_rewards="batch",
        ),
        None,
    ),
    "reinforce_pp": (_reinforce_pp, None),
    # per-sequence advantages whitened over ranks with the token weights of one process
    "reinforce_pp_baseline": (
        lambda run: _grpo(run, total_steps=1, rollout_batch_size=8, num_samples=4,
                          estimator="reinforce++_baseline", loss_type="dapo"),
        None,
    ),  # fmt: skip
    "ppo": (_ppo, None),
    "sft": (_sft, None),
    "dpo": (_dpo, None),
    "best_of_n": (_best_of_n, None),
    "reward": (_reward, None),
    "grpo_resume": (_grpo_main, 1),
    "grpo_fsdp2": (_grpo_fsdp2, 1),
    "ppo_fsdp2": (_ppo_fsdp2, None),
    "dpo_fsdp2": (lambda run: _dpo(run, parallel="fsdp2"), None),
    "grpo_eval_samples": (_grpo_eval_samples, None),
}

#: name -> (builder, error class, text of the error): every rank must raise it (none may be
#: left waiting for the others in a collective).
FAILING: dict[str, tuple[Callable[[Path], Any], str, str]] = {
    "inf_reward": (
        lambda run: _grpo(run, inf_reward, total_steps=1, rollout_batch_size=8, num_samples=2),
        "NonFiniteError",
        "non-finite values at step 1",
    ),
    "uneven_prompts": (
        lambda run: _grpo(run, rollout_batch_size=6, num_samples=2),
        "ValueError",
        "gives 3 prompts per step",
    ),
    "uneven_minibatch": (
        lambda run: _grpo(run, rollout_batch_size=8, num_samples=2, minibatch_size=1),
        "ValueError",
        "minibatch_size=1",
    ),
    "uneven_sft_batch": (lambda run: _sft(run, batch_size=3), "ValueError", "batch_size=3"),
}


def _weights(trainer: Any) -> dict[str, torch.Tensor]:
    """Full weights of the trained models, ``name/param`` -> CPU tensor (a collective under
    FSDP2: every rank calls it; rank 0 receives them)."""
    from rlhf_core import distributed as D

    out: dict[str, torch.Tensor] = {}
    for name, model in trainer.checkpoint_models().items():
        for k, v in D.gather_full_state_dict(model).items():
            out[f"{name}/{k}"] = v.detach().cpu().clone()
    return out


def run_scenario(name: str, run: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """Train scenario ``name`` in ``run`` (resuming once when it has a stop step); return the
    final trainer and its weights."""
    build, stop = SCENARIOS[name]
    if stop is not None:
        build(run).train(stop_at_step=stop)
    trainer = build(run)
    trainer.train()
    return trainer, _weights(trainer)


# ---------------------------------------------------------------------------------------------
# the worker: python -m torch.distributed.run ... tests/test_trainers_distributed.py --worker DIR


def _worker(out: Path) -> None:
    from rlhf_core import distributed as D

    torch.set_num_threads(1)
    ctx = D.init_distributed(device="cpu", timeout_s=120)
    assert ctx.world_size == WORLD and ctx.backend == "gloo", ctx
    report: dict[str, Any] = {}
    for name in SCENARIOS:
        t0 = time.perf_counter()
        run = out / name
        try:
            trainer, weights = run_scenario(name, run)
        except Exception as exc:  # noqa: BLE001 - the test reports it per scenario
            import traceback

            report[name] = {"ok": False, "error": f"{exc!r}\n{traceback.format_exc()}"}
            D.barrier(ctx)
            continue
        wrapper = type(trainer.checkpoint_models()[next(iter(trainer.checkpoint_models()))])
        report[name] = {
            "ok": True,
            "seconds": time.perf_counter() - t0,
            "wrapper": wrapper.__name__,
        }
        if weights:  # FSDP2: rank 0 only
            torch.save(weights, out / f"{name}.rank{ctx.rank}.pt")
        D.barrier(ctx)
    for name, (build, _, _) in FAILING.items():
        try:
            build(out / name).train()
            report[name] = {"raised": None}
        except Exception as exc:  # noqa: BLE001 - the expected failure, reported
            report[name] = {"raised": type(exc).__name__, "message": str(exc)}
        D.barrier(ctx)
    (out / f"report.rank{ctx.rank}.json").write_text(json.dumps(report, indent=1))
    D.barrier(ctx)
    D.shutdown_distributed()


# ---------------------------------------------------------------------------------------------
# the launch and the checks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trainers_dist")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent), *filter(None, [env.get("PYTHONPATH")])]
    )
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", str(WORLD),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
        __file__, "--worker", str(out),
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"the {WORLD}-process run did not finish in {LAUNCH_TIMEOUT_S} s: {exc.stderr!r}"
        )
    if proc.returncode != 0:
        pytest.fail(
            f"torchrun exited with {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
            f"stderr:\n{proc.stderr[-8000:]}"
        )
    return out


def _report(out: Path, rank: int, name: str) -> dict[str, Any]:
    rep = json.loads((out / f"report.rank{rank}.json").read_text())[name]
    assert rep["ok"], rep.get("error")
    return rep


def _metrics(run: Path) -> list[dict[str, float]]:
    from rlhf_core.monitor import read_metrics

    rows = read_metrics(run)
    return [
        {k: v for k, v in r.items() if not k.startswith("time/") and k != "wall_time"} for r in rows
    ]


def _compare_metrics(got: list[dict[str, Any]], ref: list[dict[str, Any]]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for g, r in zip(got, ref, strict=True):
        assert sorted(g) == sorted(r), (sorted(set(g) ^ set(r)), r["step"])
        for k, v in r.items():
            if v is None:  # non-finite in the log
                assert g[k] is None, k
                continue
            assert g[k] == pytest.approx(v, rel=METRIC_REL, abs=METRIC_ABS), (k, r["step"])


def _compare_weights(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    assert sorted(got) == sorted(ref)
    worst = max(float((got[k] - ref[k]).abs().max()) for k in ref)
    assert worst <= WEIGHT_ATOL, worst
    return worst


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_processes_equal_one(launched: Path, name: str, tmp_path: Path) -> None:
    rep0 = _report(launched, 0, name)
    _report(launched, 1, name)
    strategy = "fsdp2" if name.endswith("fsdp2") else "ddp"
    if strategy == "ddp":
        assert rep0["wrapper"] == "DistributedDataParallel"
    else:
        assert rep0["wrapper"].startswith("FSDP"), rep0["wrapper"]

    _, ref_weights = run_scenario(name, tmp_path / name)
    ref_metrics = _metrics(tmp_path / name)
    got_metrics = _metrics(launched / name)
    # only rank 0 logs: one line per step, no duplicates
    assert [r["step"] for r in got_metrics] == list(range(1, len(ref_metrics) + 1))
    _compare_metrics(got_metrics, ref_metrics)

    got = torch.load(launched / f"{name}.rank0.pt")
    worst = _compare_weights(got, ref_weights)
    # the measured difference, for docs/scaling.md (shown by pytest -s)
    print(f"{name}: max |weight difference| to one process {worst:.2e}")
    if strategy == "ddp":  # every replica holds the same weights, bit for bit
        other = torch.load(launched / f"{name}.rank1.pt")
        assert all(torch.equal(other[k], got[k]) for k in got)
    else:
        assert not (launched / f"{name}.rank1.pt").exists()


def test_only_rank0_writes(launched: Path) -> None:
    run = launched / "grpo"
    assert (run / "metrics.jsonl").is_file()
    assert not (run / "tensorboard").exists()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step_000002"]
    from rlhf_core.checkpoint import load_state

    extra = load_state(run / "checkpoints" / "step_000002", "extra_state")
    assert extra["world_size"] == WORLD and len(extra["rng_per_rank"]) == WORLD


def test_eval_samples_and_a_stop_under_torchrun(launched: Path, tmp_path: Path) -> None:
    """Rank 1's callback stopped both ranks after step 1 (checkpoint there); the evaluation and
    the logged samples (every rank's completions, gathered) equal one process's."""
    from rlhf_core.monitor import read_samples

    _report(launched, 0, "grpo_eval_samples")
    run = launched / "grpo_eval_samples"
    assert [r["step"] for r in _metrics(run)] == [1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == [
        "step_000001"
    ]
    assert "eval/accuracy" in _metrics(run)[0] and "eval/kl" in _metrics(run)[0]
    run_scenario("grpo_eval_samples", tmp_path / "one")
    got, ref = read_samples(run), read_samples(tmp_path / "one")
    assert len(got) == 8
    assert [(r["prompt"], r["completion"]) for r in got] == [
        (r["prompt"], r["completion"]) for r in ref
    ]
    for key in ("reward", "advantage"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in ref], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", list(FAILING))
def test_every_rank_stops_on_errors(launched: Path, name: str) -> None:
    _, cls, text = FAILING[name]
    for rank in range(WORLD):
        rep = json.loads((launched / f"report.rank{rank}.json").read_text())[name]
        assert rep["raised"] == cls, rep
        assert text in rep["message"], rep["message"]
    if name == "inf_reward":  # one rank found the inf, the other was told which
        msgs = [
            json.loads((launched / f"report.rank{r}.json").read_text())[name]["message"]
            for r in range(WORLD)
        ]
        assert sum("reward/inf_reward" in m for m in msgs) == 1, msgs
        assert sum("on rank(s) [" in m for m in msgs) == 1, msgs


def test_resume_under_torchrun_is_exact(launched: Path) -> None:
    """Stopped after step 1 and resumed by a new trainer on both ranks (every rank loads the
    checkpoint rank 0 wrote): the same bits as the uninterrupted 2-process run."""
    _report(launched, 0, "grpo_resume")
    a = torch.load(launched / "grpo.rank0.pt")
    b = torch.load(launched / "grpo_resume.rank0.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(launched / "grpo") == _metrics(launched / "grpo_resume")


def test_fsdp2_checkpoint_resumes_in_one_process(launched: Path, tmp_path: Path) -> None:
    """The FSDP2 run's step-1 checkpoint (full weights and optimizer state gathered to rank 0,
    in the single-process layout) continued by one process equals one process throughout."""
    import shutil

    _report(launched, 0, "grpo_fsdp2")
    src = launched / "grpo_fsdp2" / "checkpoints"
    # the FSDP2 run kept its step-1 and step-2 checkpoints (keep_last=2); resume from step 1
    run = tmp_path / "resumed"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(src / "step_000001", run / "checkpoints" / "step_000001")
    (run / "checkpoints" / "latest").write_text("step_000001\n")
    meta = json.loads((run / "checkpoints" / "step_000001" / "meta.json").read_text())
    assert meta["models"] == {"policy": "policy.safetensors"}  # a gathered full state dict
    trainer = _grpo_fsdp2(run)
    trainer.train()
    _, ref = run_scenario("grpo_fsdp2", tmp_path / "ref")
    _compare_weights(_weights(trainer), ref)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        raise SystemExit(
            "usage: torchrun --nproc-per-node 2 tests/test_trainers_distributed.py --worker DIR"
        )
    sys.path.insert(0, str(Path(__file__).parent))
    _worker(Path(sys.argv[2]))
