#!/usr/bin/env bash
# Proves that the wheel in dist/ installs and works on a machine without Rust: a fresh virtual
# environment, a PATH with no cargo or rustc on it, `pip install` of the wheel (dependencies
# under requirements/constraints.txt, so pip's cache serves them), then the README's Python
# blocks and `rlhf-core demo --quick`, run from outside the checkout so that nothing can be
# imported from the source tree. `make test-wheel` runs it after `make wheel`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
wheel=$(ls -t "$repo"/dist/rlhf_core-*.whl 2>/dev/null | head -n 1 || true)
[ -n "$wheel" ] || { echo "no wheel in $repo/dist: run 'make wheel' first" >&2; exit 1; }
python=$(command -v "${PY:-python3}")
python=$("$python" -c 'import sys; print(sys.executable)')   # past pyenv's shims
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$work/venv"
export PATH="$work/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin"
for tool in cargo rustc maturin; do
  if command -v "$tool" >/dev/null; then echo "$tool is still on PATH: $(command -v "$tool")" >&2; exit 1; fi
done
echo "== installing $(basename "$wheel") (no Rust toolchain on PATH)"
PIP_CONSTRAINT="$repo/requirements/constraints.txt" pip install -q --disable-pip-version-check "$wheel"

cd "$work"
python - "$repo/README.md" <<'PY'
import pathlib, re, sys, rlhf_core
assert "site-packages" in rlhf_core.__file__, rlhf_core.__file__
readme = pathlib.Path(sys.argv[1]).read_text(encoding="utf-8")
blocks = [b for kind, b in re.findall(r"^```(\w*)\n(.*?)^```", readme, re.M | re.S) if kind == "python"]
assert blocks, "the README has no python block"
for i, code in enumerate(blocks, 1):
    print(f"== README python block {i}")
    exec(compile(code, f"README.md python block {i}", "exec"), {"__name__": "__readme__"})
print(f"rlhf_core {rlhf_core.__version__} from {rlhf_core.__file__}: {len(blocks)} README blocks ran")
PY
echo "== rlhf-core demo --quick"
rlhf-core demo --quick --run_dir "$work/demo"
test -s "$work/demo/report.md"
echo "wheel OK: installed without Rust, README quickstart and the quick demo ran"
