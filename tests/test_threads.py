"""Threads: every kernel releases the GIL, results are bit-identical for 1 and N rayon
threads, and a forked child still computes (serially)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

from rlhf_core import ops

# ---------------------------------------------------------------------------------------------
# The GIL is released during every kernel
# ---------------------------------------------------------------------------------------------

N = 4_000_000  # tokens: several milliseconds per call on one core


@pytest.fixture(scope="module")
def big():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(N).astype(np.float32)
    y = rng.standard_normal(N).astype(np.float32)
    one_row = np.array([0, N], dtype=np.int64)
    scores = rng.standard_normal(N).astype(np.float32)
    return x, y, one_row, scores


KERNELS = {
    "gae": lambda x, y, off, s: ops.gae(x, y, offsets=off, gamma=0.99, lam=0.95),
    "discounted_returns": lambda x, y, off, s: ops.discounted_returns(x, offsets=off, gamma=0.9),
    "group_advantages": lambda x, y, off, s: ops.group_advantages(s, group_size=10),
    "masked_mean": lambda x, y, off, s: ops.masked_mean(x, offsets=off, axis=-1),
    "masked_var": lambda x, y, off, s: ops.masked_var(x),
    "masked_whiten": lambda x, y, off, s: ops.masked_whiten(x),
    "kl": lambda x, y, off, s: ops.kl(x, y),
    "shaped_rewards": lambda x, y, off, s: ops.shaped_rewards(
        s[:1], x, y, offsets=off, beta=0.1, estimator="k3"),
    "broadcast_to_tokens": lambda x, y, off, s: ops.broadcast_to_tokens(s[:1], offsets=off),
    "reduce_tokens": lambda x, y, off, s: ops.reduce_tokens(x, offsets=off, how="mean"),
    "RunningMoments.update": lambda x, y, off, s: ops.RunningMoments().update(x),
}


def _iterations_beside(fn) -> int:
    """Call ``fn`` once in a worker thread and count how many times this thread runs a Python
    loop while the call is in progress. With a 1 s switch interval the interpreter never forces
    a switch during a short call, so a kernel that held the GIL for its whole run would let this
    thread start counting only after it returned: 0 iterations. A kernel that releases the GIL
    lets this thread count beside it (how many depends on the scheduler, not on timing
    thresholds: any positive count proves the release)."""
    started, done = threading.Event(), threading.Event()

    def worker() -> None:
        started.set()
        fn()
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    started.wait()
    n = 0
    while not done.is_set():
        n += 1
    t.join()
    return n


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_the_kernel_releases_the_gil(name, big):
    """Python keeps running in another thread while the kernel computes. Up to three attempts
    absorb a scheduler that does not run this thread at all during one call on a busy machine;
    a kernel holding the GIL gives 0 in every one of them."""
    fn = KERNELS[name]
    old_interval = sys.getswitchinterval()
    ops.set_parallelism(False)  # one thread per call
    sys.setswitchinterval(1.0)
    try:
        fn(*big)  # warm up (first-touch page faults, output cache)
        counts = []
        for _ in range(3):
            counts.append(_iterations_beside(lambda: fn(*big)))
            if counts[-1] > 0:
                break
    finally:
        sys.setswitchinterval(old_interval)
        ops.set_parallelism(True)
    assert max(counts) > 0, f"{name}: no Python ran beside the kernel in {len(counts)} calls"


# ---------------------------------------------------------------------------------------------
# Same bits for any thread count
# ---------------------------------------------------------------------------------------------

_DIGEST_SCRIPT = r"""
import hashlib, json, sys
import numpy as np
from rlhf_core import ops
if len(sys.argv) > 1 and sys.argv[1] == "serial":
    ops.set_parallelism(False)
rng = np.random.default_rng(1)
B, T = 300, 700                                  # 210k slots: well above the serial cutoff
lengths = rng.integers(0, T + 1, B)
mask = np.arange(T)[None, :] < lengths[:, None]
mask &= rng.random((B, T)) > 0.1                 # holes (multi-turn style)
offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
out = {}
def h(name, *arrays):
    d = hashlib.sha256()
    for a in arrays:
        d.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    out[name] = d.hexdigest()
for dt in (np.float32, np.float64):
    r = rng.standard_normal((B, T)).astype(dt)
    v = rng.standard_normal((B, T)).astype(dt)
    flat = rng.standard_normal(int(offsets[-1])).astype(dt)
    s = rng.standard_normal(B).astype(dt)
    k = dt.__name__
    h("gae" + k, *ops.gae(r, v, mask, gamma=0.99, lam=0.95, masked="zero"))
    h("gae_ragged" + k, *ops.gae(flat, flat[::-1].copy(), offsets=offsets, gamma=0.9, lam=0.9))
    h("returns" + k, ops.discounted_returns(r, mask, gamma=0.97))
    h("mean" + k, ops.masked_mean(r, mask), ops.masked_mean(flat, offsets=offsets, axis=-1))
    h("var" + k, ops.masked_var(r, mask), ops.masked_var(r, mask, axis=-1))
    h("whiten" + k, ops.masked_whiten(r, mask), ops.masked_whiten(flat, offsets=offsets, axis=-1))
    h("kl" + k, *[ops.kl(r, v, estimator=e) for e in ("k1", "k2", "k3", "abs")])
    h("shaped" + k, ops.shaped_rewards(s, r, v, mask, beta=0.05, estimator="k3"))
    h("broadcast" + k, ops.broadcast_to_tokens(s, mask), ops.broadcast_to_tokens(s, offsets=offsets))
    h("reduce" + k, ops.reduce_tokens(r, mask, how="mean"), ops.reduce_tokens(flat, offsets=offsets))
    h("group" + k, ops.group_advantages(np.tile(s, 40), group_size=8))
    rm = ops.RunningMoments().update(r, mask)
    out["running" + k] = [rm.count, rm.mean.hex(), rm.var.hex()]
# the rollout buffer: a large add copies its columns in parallel; GAE; a padded batch
from rlhf_core.buffer import RolloutBuffer
resp_len = np.maximum(lengths, 1)
resp = [rng.integers(0, 1000, n) for n in resp_len]
buf = RolloutBuffer()
buf.add(prompt_ids=[rng.integers(0, 1000, 5) for _ in range(B)], response_ids=resp,
        logprobs=[rng.standard_normal(n).astype(np.float32) for n in resp_len],
        values=[rng.standard_normal(n).astype(np.float32) for n in resp_len],
        scores=rng.standard_normal(B))
buf.compute_advantages("gae", gamma=1.0, lam=0.95)
batch = buf.batch(np.arange(B)[::-1].copy()).to_padded()
h("buffer", buf.field("prompt_ids"), buf.field("response_ids"), buf.field("logprobs"),
  buf.field("values"), buf.field("advantages"), *[batch[k] for k in sorted(batch)])
print(json.dumps(out))
"""


def _digests(threads: str, *args: str) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=threads, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _DIGEST_SCRIPT, *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_bit_identical_for_one_and_many_threads():
    one = _digests("1")
    many = _digests("4")
    serial = _digests("4", "serial")
    assert one == many == serial


# ---------------------------------------------------------------------------------------------
# Fork safety
# ---------------------------------------------------------------------------------------------


def _child_kl(q, logp, ref_logp):
    try:
        q.put(hashlib.sha256(ops.kl(logp, ref_logp).tobytes()).hexdigest())
    except BaseException as e:  # report anything, so the parent does not hang on q.get
        q.put(repr(e))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method is Linux-only here")
def test_forked_child_computes_after_parent_used_the_thread_pool():
    rng = np.random.default_rng(0)
    logp = rng.standard_normal(400_000)
    ref_logp = rng.standard_normal(400_000)
    expect = hashlib.sha256(ops.kl(logp, ref_logp).tobytes()).hexdigest()  # parallel in parent
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (py3.12+)
        p = ctx.Process(target=_child_kl, args=(q, logp, ref_logp))
        p.start()
    try:
        got = q.get(timeout=60)
    finally:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    assert got == expect
    assert ops.get_parallelism()  # the parent keeps its threads


# ---------------------------------------------------------------------------------------------
# One buffer, one sampler, several threads
# ---------------------------------------------------------------------------------------------


def _rollouts(rng: np.random.Generator, n: int, length: int = 64) -> dict:
    return dict(
        prompt_ids=[rng.integers(0, 100, 4) for _ in range(n)],
        response_ids=[rng.integers(0, 100, length) for _ in range(n)],
        logprobs=[rng.standard_normal(length).astype(np.float32) for _ in range(n)],
        values=[rng.standard_normal(length).astype(np.float32) for _ in range(n)],
        scores=rng.standard_normal(n),
        group_ids=np.arange(n) // 4,
    )


def _run_threads(targets, timeout: float = 120.0) -> list[BaseException]:
    """Run every target in its own thread; return what they raised. A thread still alive after
    ``timeout`` (a deadlock) fails the test."""
    errors: list[BaseException] = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # collect everything, typed or not
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "threads deadlocked"
    return errors


def test_one_buffer_written_and_read_from_several_threads():
    """A writer clears, adds and computes advantages while readers take statistics, snapshots
    and padded batches of the same buffer: every call succeeds (no "Already borrowed"), and
    every snapshot is a whole buffer (it loads back), never half of an add."""
    from rlhf_core.buffer import RolloutBuffer
    from rlhf_core.errors import ShapeError, StateError

    rng = np.random.default_rng(0)
    batches = [_rollouts(rng, 64) for _ in range(3)]
    buf = RolloutBuffer()
    buf.add(**batches[0])
    stop = threading.Event()
    start = threading.Barrier(4)
    seen: list[int] = []

    def writer():
        start.wait()
        try:
            for i in range(100):
                buf.clear()
                buf.add(**batches[i % 3])
                buf.compute_advantages("grpo" if i % 2 else "gae", gamma=1.0, lam=0.95)
        finally:
            stop.set()

    def snapshots():
        start.wait()
        while True:
            done = stop.is_set()  # one more round after the writer ends: never zero rounds
            state = buf.state_dict()
            RolloutBuffer().load_state_dict(state)  # checks every invariant
            stats = buf.stats()
            assert stats["num_sequences"] in (0.0, 64.0)
            seen.append(len(state["response_offsets"]) - 1)
            if done:
                return

    def batches_reader():
        start.wait()
        while not stop.is_set():
            try:
                b = buf.all().to_padded(return_tensors="np")
            except (StateError, ShapeError):
                continue  # planned before a clear / add: refused, as documented
            assert b["input_ids"].shape[1] == 4 + 64

    errors = _run_threads([writer, snapshots, snapshots, batches_reader])
    assert not errors, [repr(e) for e in errors]
    assert seen and set(seen) <= {0, 64}


def test_one_sampler_shared_by_threads_hands_out_every_batch_once():
    from rlhf_core.buffer import RolloutBuffer

    buf = RolloutBuffer()
    buf.add(**_rollouts(np.random.default_rng(1), 203, length=8))
    sampler = buf.minibatches(batch_size=7, epochs=5, seed=3)
    expect = [(mb.epoch, mb.step, mb.indices.tolist())
              for mb in buf.minibatches(batch_size=7, epochs=5, seed=3)]
    got: list[tuple] = []
    lock = threading.Lock()

    def pull():
        for mb in sampler:
            with lock:
                got.append((mb.epoch, mb.step, mb.indices.tolist()))
            assert sampler.position[0] >= 0  # a read between the writes

    errors = _run_threads([pull] * 4)
    assert not errors, [repr(e) for e in errors]
    assert sorted(got) == sorted(expect)


def test_buffer_reads_run_side_by_side():
    """Python keeps running, and reads the same buffer, while another thread materialises a
    batch of it: the shared lock lets reads run together and the GIL is released for the work
    (counted as in the kernel test above)."""
    from rlhf_core.buffer import RolloutBuffer

    buf = RolloutBuffer()
    buf.add(**_rollouts(np.random.default_rng(2), 2048, length=256))
    mb = buf.all()
    old_interval = sys.getswitchinterval()
    ops.set_parallelism(False)
    sys.setswitchinterval(1.0)
    try:
        fn = lambda: mb.to_padded(return_tensors="np")  # noqa: E731
        fn()  # warm up
        counts = []
        for _ in range(3):
            counts.append(_iterations_beside(fn))
            if counts[-1] > 0:
                break
        assert len(buf) == 2048 and buf.num_response_tokens == 2048 * 256
    finally:
        sys.setswitchinterval(old_interval)
        ops.set_parallelism(True)
    assert max(counts) > 0, f"no Python ran beside to_padded in {len(counts)} calls"
