#!/usr/bin/env bash
# One entry point for a fresh clone: sets up .venv and the Fashion-MNIST data, then runs a job.
#   bash scripts/run.sh quickstart [options]   # the main job on the embedded default (Fashion-MNIST)
#   bash scripts/run.sh test [pytest options]  # the test suite
#   bash scripts/run.sh taslora ARGS...        # any taslora command inside the venv (`taslora doctor`: what is missing)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TASLORA_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

setup_data() {
  local dir="${TASLORA_FMNIST_DIR:-/usr/share/datasets/fashion-mnist}"
  if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then return; fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || command -v sudo >/dev/null 2>&1; }; then
    echo "[setup] installing Debian package dataset-fashion-mnist" >&2
    $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "[setup] could not install dataset-fashion-mnist; tests that need it will be skipped; \`bash scripts/run.sh taslora doctor\` lists what is missing" >&2
  else
    echo "[setup] Fashion-MNIST not found at $dir and apt-get is unavailable: set TASLORA_FMNIST_DIR to a folder with the IDX .gz files (\`bash scripts/run.sh taslora doctor\` lists what is missing)" >&2
  fi
}

setup_venv() {
  local stamp="$VENV/.taslora-installed"
  local want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV" >&2
    "$PY" -m venv "$VENV"
  fi
  echo "[setup] installing taslora and its dependencies (first time: a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e "$ROOT[cpu,dev]"
  echo "$want" > "$stamp"
}

cmd="${1:-}"; shift || true
setup_venv
setup_data
export PYTHONUNBUFFERED=1
case "$cmd" in
  quickstart)
    # Start from the converged wide-space supernet shipped with the repository (benchmarks/reproduction-wide/: the
    # regime where a subnet has headroom, docs/results.md), unless the caller chose a supernet or the smoke version.
    shipped="$ROOT/benchmarks/reproduction-wide/supernet"
    if [ -f "$shipped/supernet.safetensors" ] && [[ " $* " != *" --supernet "* ]] && [[ " $* " != *" --fast "* ]]; then
      set -- --supernet "$shipped" "$@"
    fi
    exec "$VENV/bin/taslora" quickstart "$@" ;;
  test) cd "$ROOT" && exec "$VENV/bin/python" -m pytest "$@" ;;
  taslora) exec "$VENV/bin/taslora" "$@" ;;
  setup) ;;
  *) echo "usage: bash scripts/run.sh {quickstart|test|taslora|setup} [args...]" >&2; exit 2 ;;
esac
