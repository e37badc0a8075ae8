#!/usr/bin/env bash
# The GPU check of rlhf_core, in one script (see docs/scaling.md, "Checking on a GPU").
#
# Two modes:
#
#   bash benches/gpu_check.sh --prepare
#       On the development machine (needs PyPI): builds the abi3 wheel into dist/ (make wheel)
#       and downloads TRL and the pure-Python packages it needs that the GPU image lacks into
#       .whl/ (both folders are git-ignored; carry them to the GPU machine).
#
#   bash benches/gpu_check.sh [--steps N] [--warmup N]
#       On the GPU machine (no network): installs dist/*.whl and .whl/*.whl into /tmp/site
#       without dependencies, runs the CUDA tests (tests/test_gpu.py) and the end-to-end GRPO
#       bench (benches/e2e_grpo.py: TRL's GRPOTrainer vs ours), prints a short table and writes
#       logs and JSON to $OUT (or ./gpu_check_out when OUT is unset). The `mem` part (not in
#       the default PARTS) runs the same bench with TRL's memory choices on both sides
#       (--memory-preset: beta 0, so no reference model, and gradient checkpointing on; what
#       configs/gpu/grpo_gpu.toml sets) and reports both peaks. vLLM is not part of the check:
#       it is larger than what can be carried to the GPU machine (docs/generation.md).
#
# With the device tool of this workplace:
#   run(command="bash benches/gpu_check.sh", carry=["dist", ".whl"], timeout_s=600)
# (E2E_LIMIT, TESTS_LIMIT, GEN_LIMIT and MEM_LIMIT in the environment shorten or lengthen the
# parts; PARTS="mem e2e" runs the memory comparison first)
set -uo pipefail

cd "$(dirname "$0")/.."

# Pinned versions of what the GPU image lacks (it has accelerate, pandas, pyarrow, psutil,
# pyyaml, jinja2, huggingface_hub, transformers, xxhash, fsspec, tqdm, requests, filelock).
TRL_WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)

if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    make wheel
    mkdir -p .whl
    rm -f .whl/*.whl
    PY=${PY:-.venv/bin/python}
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d .whl "${TRL_WHEELS[@]}"
    ls -l dist .whl
    du -ch dist/*.whl .whl/*.whl | tail -1
    exit 0
fi

STEPS=3
WARMUP=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --steps) STEPS="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        *) echo "unknown argument: $1 (expected --prepare, --steps N, --warmup N)" >&2; exit 2 ;;
    esac
done

OUT_DIR=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}

shopt -s nullglob
wheels=(dist/*.whl .whl/*.whl)
ours=(dist/*.whl)
if [[ ${#ours[@]} -eq 0 ]]; then
    echo "no wheel in dist/: run 'bash benches/gpu_check.sh --prepare' first and carry dist" >&2
    exit 2
fi
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${wheels[@]}" || { echo "wheel install failed" >&2; exit 3; }
export PYTHONPATH=/tmp/site

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
"$PY" - <<'EOF' | tee "$OUT_DIR/versions.txt"
import importlib
for name in ("torch", "transformers", "trl", "datasets", "rlhf_core"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')} ({mod.__file__})")
    except Exception as exc:  # noqa: BLE001
        print(f"{name}: not importable ({type(exc).__name__}: {exc})")
EOF

# the parts, most important first, each under its own time limit (seconds) so that one hang
# still leaves the others' results in $OUT_DIR
E2E_LIMIT=${E2E_LIMIT:-270}
TESTS_LIMIT=${TESTS_LIMIT:-150}
GEN_LIMIT=${GEN_LIMIT:-200}
MEM_LIMIT=${MEM_LIMIT:-200}

# PARTS picks and orders the parts (default: all three); E2E_ARGS and GEN_ARGS add options
PARTS=${PARTS:-e2e tests gen}
bench_rc=0 tests_rc=0 gen_rc=0 mem_rc=0
for part in $PARTS; do
    case "$part" in
    e2e)
        echo "== end-to-end GRPO bench (limit ${E2E_LIMIT}s) =="
        TORCH_LOGS=recompiles timeout "$E2E_LIMIT" "$PY" benches/e2e_grpo.py --steps "$STEPS" \
            --warmup "$WARMUP" ${E2E_ARGS:-} --json "$OUT_DIR/e2e_grpo.json" 2>&1 \
            | tee "$OUT_DIR/e2e_grpo.log"
        bench_rc=${PIPESTATUS[0]} ;;
    tests)
        echo "== CUDA tests (limit ${TESTS_LIMIT}s) =="
        timeout "$TESTS_LIMIT" "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py \
            --junitxml="$OUT_DIR/test_gpu.xml" 2>&1 | tee "$OUT_DIR/test_gpu.log"
        tests_rc=${PIPESTATUS[0]} ;;
    gen)
        echo "== generation paths (limit ${GEN_LIMIT}s) =="
        TORCH_LOGS=recompiles,perf_hints,graph_breaks timeout "$GEN_LIMIT" "$PY" benches/bench_generation.py \
            ${GEN_ARGS:-} --json "$OUT_DIR/generation.json" 2>&1 | tee "$OUT_DIR/generation.log"
        gen_rc=${PIPESTATUS[0]} ;;
    mem)
        echo "== peak memory with TRL's memory choices (limit ${MEM_LIMIT}s) =="
        timeout "$MEM_LIMIT" "$PY" benches/e2e_grpo.py --memory-preset --steps 2 --warmup 1 \
            --json "$OUT_DIR/e2e_memory.json" 2>&1 | tee "$OUT_DIR/e2e_memory.log"
        mem_rc=${PIPESTATUS[0]} ;;
    *) echo "unknown part '$part' in PARTS (expected e2e, tests, gen, mem)" >&2; exit 2 ;;
    esac
done

echo
echo "== summary =="
echo "GPU: $(head -1 "$OUT_DIR/gpu.txt")"
[[ -f "$OUT_DIR/test_gpu.log" ]] && echo "tests/test_gpu.py: $(grep -E '(passed|failed|skipped|error)' "$OUT_DIR/test_gpu.log" | tail -1) (exit $tests_rc)"
if [[ " $PARTS " != *" e2e "* ]]; then
    :
elif [[ -f "$OUT_DIR/e2e_grpo.json" ]]; then
    "$PY" - "$OUT_DIR/e2e_grpo.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{'trainer':<14}{'step s':>9}{'tok/s':>9}{'peak GiB':>10}")
for name in ("trl", "ours"):
    x = r.get(name)
    if x:
        peak = x.get("peak_memory_gib") or 0.0
        print(f"{name:<14}{x['median_step_s']:>9.3f}{x['completion_tokens_per_s']:>9.0f}{peak:>10.1f}")
if r.get("trl_error"):
    print("trl:", r["trl_error"])
if r.get("ratio") is not None:
    print(f"ratio ours/TRL: {r['ratio']:.3f} (target <= 0.333)")
o = r.get("ours") or {}
print("ours: generate calls by path", o.get("generation_backends"))
for k, v in (o.get("phases_median_s") or {}).items():
    print(f"  {k:<12}{v:>8.3f} s {100 * v / o['median_step_s']:>6.2f} %")
EOF
else
    echo "bench: no result (exit $bench_rc), see $OUT_DIR/e2e_grpo.log"
fi
if [[ " $PARTS " == *" mem "* ]]; then
    echo "peak memory, TRL's memory choices (exit $mem_rc):"
    grep -E "^(TRL|rlhf_core) " "$OUT_DIR/e2e_memory.log" 2>/dev/null || echo "  no result"
fi
if [[ " $PARTS " == *" gen "* ]]; then
    echo "generation paths (exit $gen_rc):"
    grep -E "^(hf-|rlhf_core|profile:)" "$OUT_DIR/generation.log" 2>/dev/null || echo "  no result"
fi
exit $(( tests_rc != 0 || bench_rc != 0 || gen_rc != 0 || mem_rc != 0 ))
