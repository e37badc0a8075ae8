"""Tests of the vLLM rollout backend against a real engine (vLLM's CPU build, ``.venv-vllm``).

Run them with ``make test-vllm``: their own pytest process, ``VLLM_ENABLE_V1_MULTIPROCESSING=0
OMP_NUM_THREADS=1``. An in-process engine changes the process it runs in (it replaces
``torch.set_num_threads`` by a no-op, sets ``LD_PRELOAD`` and a NUMA memory policy, starts a
``torch.distributed`` group), so these tests are skipped, with the reason printed, when they
are collected together with the rest of the suite, and when ``import vllm`` fails.

The folder is not called ``tests/vllm``: pytest puts ``tests/`` on ``sys.path``, where a
``vllm`` folder would be importable as an empty namespace package named ``vllm`` (and make
``find_spec("vllm")`` say vLLM is installed in the main environment).

One engine serves the whole session (starting one costs seconds); each test first syncs the
weights it needs into it.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

#: Warnings raised inside vLLM (or by torch on vLLM's behalf) while the engine imports and
#: starts: not ours to fix, and not errors when pytest turns every other warning into one.
THIRD_PARTY_WARNINGS = (
    "ignore:::vllm",
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [it for it in items if HERE in Path(str(it.path)).resolve().parents]
    if not mine:
        return
    if len(mine) < len(items):  # collected with the rest of the suite
        if importlib.util.find_spec("vllm") is None:
            reason = "vllm is not installed here; make test-vllm runs these tests in .venv-vllm"
        else:
            reason = (
                "vLLM tests run in their own pytest process (an in-process engine changes the "
                "process): make test-vllm"
            )
    else:
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            reason = f"vllm is not importable ({exc}); make vllm-env, then make test-vllm"
        else:
            for it in mine:
                for spec in THIRD_PARTY_WARNINGS:
                    it.add_marker(pytest.mark.filterwarnings(spec))
            return
    for it in mine:
        it.add_marker(pytest.mark.skip(reason=reason))


# ---- shared fixtures ---------------------------------------------------------------------------

#: The engine's prompts + completions fit in this.
MAX_MODEL_LEN = 512


@pytest.fixture(scope="session")
def tok():
    from rlhf_core import models

    return models.load_tokenizer()


@pytest.fixture(scope="session")
def policy0(tok):
    """The built-in tiny model (hidden 64, 2 layers, tied embeddings, float32) with 2 heads
    of 32: vLLM's CPU attention refuses the built-in default head_dim 16."""
    from rlhf_core import models

    return models.build_builtin_policy(tok, seed=0, num_attention_heads=2, num_key_value_heads=1)


@pytest.fixture(scope="session")
def engine(policy0, tok):
    """One colocated engine for the session, started from ``policy0``."""
    from rlhf_core.generation import make_backend
    from rlhf_core.generation.vllm import VLLMConfig

    backend = make_backend("vllm", policy0, tok, vllm=VLLMConfig(max_model_len=MAX_MODEL_LEN))
    yield backend
    backend.close()


@pytest.fixture
def policy(policy0, engine):
    """A fresh copy of ``policy0``, already synced into the engine."""
    model = copy.deepcopy(policy0)
    engine.sync_weights(model)
    return model
