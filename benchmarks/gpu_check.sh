#!/usr/bin/env bash
# Every GPU path of taslora in one run of at most 8 minutes on one GPU, for the few minutes a GPU machine is lent.
#
#   TASLORA_FMNIST_DIR=/path/to/fashion-mnist bash benchmarks/gpu_check.sh [--out DIR] [--budget-s 450]
#   bash benchmarks/gpu_check.sh --dry-run [--out DIR]     # the same steps on the CPU with tiny sizes (tested)
#
# Needs no network and no `pip install`: torch, timm, onnx, onnxruntime (the CPU wheel is enough), typer, rich,
# safetensors and pytest importable by $PYTHON (default python3). The project runs from this source tree: the
# repository and an alias `taslora_cli` -> cli/ go on PYTHONPATH, so every subprocess (pytest, taslora) sees them.
# Each step runs under its own `timeout`, writes <step>.log (and its files) into the report folder and one line
# into steps.jsonl; a failed or timed-out step is recorded and the next one runs. The end is one table (step,
# status, seconds, key number) in summary.md / summary.json, and report.tar.gz holds the table, the logs and the
# step results (one file to copy back); the exit code is 1 if any step failed or timed out.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
DRY=0
OUT="${TMPDIR:-/tmp}/gpu-check-$(date +%Y%m%d-%H%M%S)"
BUDGET=450
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="${2:?--out needs a folder}"; shift ;;
    --budget-s) BUDGET="${2:?--budget-s needs seconds}"; shift ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option '$1' (--dry-run, --out DIR, --budget-s N)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT" && R="$(cd "$OUT" && pwd)" || exit 2
: > "$R/steps.jsonl"
START=$(date +%s)

# ---- run from the source tree: `taslora_cli` is the import name of the folder cli/ (pyproject's package-dir),
# so a folder holding the alias goes on PYTHONPATH next to the repository (a copy where links are not allowed)
mkdir -p "$R/pysrc"
ln -sfn "$ROOT/cli" "$R/pysrc/taslora_cli" 2>/dev/null || { rm -rf "$R/pysrc/taslora_cli"; cp -r "$ROOT/cli" "$R/pysrc/taslora_cli"; }
export PYTHONPATH="$ROOT:$R/pysrc${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE PY R ROOT
if ! "$PY" -c "import taslora_cli.main, taslora_core, taslora_deploy; print('taslora_cli:', taslora_cli.__file__)" \
    > "$R/launcher.txt" 2>&1; then
  cat "$R/launcher.txt" >&2
  echo "gpu_check.sh: cannot import the project from $ROOT with $PY" >&2
  exit 2
fi

# ---- sizes: a real run on CUDA, or the dry run (same steps, tiny sizes, CPU). Word-split on purpose below.
if [ "$DRY" = 1 ]; then
  export DEV=cpu TARGET=torch-cpu DRYFLAG=--dry-run TESTS="tests/test_trt.py tests/test_timing.py"
  export BENCH_ARGS="--batch-sizes 1,4 --min-iters 5 --min-time-s 0.05 --warmup-s 0.05 --paired-iters 5"
  export SEARCH_ARGS="--population 4 --iterations 1 --val-subset 200"
  export VS_TIMM_ARGS="--space fmnist --no-onnx --iters 3 --max-iters 5 --row-s 0.2 --warmup-s 0.05"
  LIMITS="doctor=180 gpu_tests=300 train_step=300 vs_timm=300 overhead=300 quickstart=900 latency_search=300 tensorrt=120"
else
  export DEV=cuda TARGET=torch-cuda DRYFLAG= TESTS=tests
  export BENCH_ARGS="--batch-sizes 1,64 --min-iters 100 --min-time-s 1 --warmup-s 0.5 --paired-iters 200"
  export SEARCH_ARGS="--population 10 --iterations 2 --val-subset 2000"
  export VS_TIMM_ARGS="--space autoformer-t --space autoformer-s --iters 20 --max-iters 200 --row-s 3 --warmup-s 0.5"
  LIMITS="doctor=40 gpu_tests=150 train_step=90 vs_timm=60 overhead=75 quickstart=150 latency_search=75 tensorrt=120"
fi

limit_of() { local kv; for kv in $LIMITS; do [ "${kv%%=*}" = "$1" ] && { echo "${kv#*=}"; return; }; done; echo 60; }
record() {  # NAME STATUS MILLISECONDS RC REASON -> one line of steps.jsonl
  "$PY" -c 'import json, sys; n, s, ms, rc, why = sys.argv[1:6]; print(json.dumps({"step": n, "status": s,
"seconds": int(ms) / 1000, "rc": int(rc), "reason": why, "log": n + ".log"}))' "$@" >> "$R/steps.jsonl"
}
skip() { echo "== $1: skipped ($2)"; record "$1" skipped 0 0 "$2"; }
step() {  # NAME: run the function NAME under its time limit (cut to what is left of the budget)
  local name="$1" limit left t0 rc status ms
  limit=$(limit_of "$name")
  left=$(( BUDGET - ($(date +%s) - START) ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then skip "$name" "the ${BUDGET} s budget is spent"; return; fi
  echo "== $name (limit ${limit} s)"
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" bash -c "set -euo pipefail; $name" > "$R/$name.log" 2>&1
  rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  record "$name" "$status" "$ms" "$rc" "exit $rc"
  echo "   $status (exit $rc) in $(( ms / 1000 )) s; log $R/$name.log"
}

# ---- the steps: each a function, run by `step` in its own bash under `timeout`
taslora() { "$PY" -m taslora_cli.main "$@"; }
doctor() { taslora doctor --workdir "$R/ws" --json | tee "$R/doctor.json"; }
gpu_tests() { cd "$ROOT" && "$PY" -m pytest -m "gpu or trt" -q -p no:cacheprovider -o addopts=-ra $TESTS; }
train_step() { "$PY" "$ROOT/benchmarks/gpu_check_steps.py" train-step --device "$DEV" --out "$R/train_step.json" $DRYFLAG; }
# ours / timm's ViT of the same size on $DEV: eager batch 1 and 8, training steps (issue 28's rows)
vs_timm() { "$PY" "$ROOT/benchmarks/bench_vs_timm.py" --device "$DEV" --out "$R/vs_timm" --work "$R/vs_timm_work" $VS_TIMM_ARGS; }
overhead() {
  "$PY" "$ROOT/benchmarks/gpu_check_steps.py" overhead-models --out "$R/overhead" $DRYFLAG
  # folded vs no-LoRA on torch ($DEV): host wall clock, GPU time from CUDA events, CUDA graphs on and off, paired A/B
  taslora bench "$R/overhead/folded" "$R/overhead/baseline" --device "$DEV" --compare "$R/overhead/baseline" \
    --out "$R/overhead" --no-plot $BENCH_ARGS
  # the zero-overhead certificate's latency test on the same pair: torch-cuda, timed with CUDA events
  "$PY" "$ROOT/benchmarks/gpu_check_steps.py" certificate --models "$R/overhead" --device "$DEV" \
    --out "$R/overhead/certificate.json" $DRYFLAG
}
quickstart() { taslora quickstart --fast --workdir "$R/ws"; }
latency_search() {
  # every candidate that passes the FLOPs bound is measured on $TARGET
  taslora search --workdir "$R/ws" --device "$DEV" --flops 10M --latency-budget 50 --target "$TARGET" $SEARCH_ARGS \
    --out "$R/latency_best.json"
}
tensorrt() {
  taslora export --workdir "$R/ws" --out "$R/trt" --onnx --trt --precision fp16 --gate-images 2000
  taslora bench "$R/trt/model.plan" "$R/trt/model_fp16.plan" "$R/trt/model.onnx" --device cuda --out "$R/trt" \
    --no-plot $BENCH_ARGS
}
export -f taslora doctor gpu_tests train_step vs_timm overhead quickstart latency_search tensorrt

echo "gpu_check: report in $R ($([ "$DRY" = 1 ] && echo 'dry run on the CPU' || echo "device $DEV"), budget ${BUDGET} s)"
step doctor
step gpu_tests
step train_step
step vs_timm
step overhead
step quickstart
if compgen -G "$R/ws/mole/*/mole.json" > /dev/null; then step latency_search; else skip latency_search "needs the quickstart's MoLE run"; fi
TRT_WHY=$("$PY" -c "from taslora_deploy.trt_engine import tensorrt_status as s; ok, why = s(); print('' if ok else why)" 2>&1)
if [ -n "$TRT_WHY" ]; then
  skip tensorrt "$TRT_WHY"
elif ! compgen -G "$R/ws/searches/*/best.json" > /dev/null; then
  skip tensorrt "needs the quickstart's search"
else
  step tensorrt
fi

echo
echo "gpu_check summary ($(( $(date +%s) - START )) s in all; report $R)"
"$PY" "$ROOT/benchmarks/gpu_check_steps.py" summary "$R"
rc=$?
# one small file to carry back from a lent machine: the table, every log and the step results
(cd "$R" && tar czf report.tar.gz --ignore-failed-read summary.md summary.json steps.jsonl launcher.txt ./*.log \
  doctor.json train_step.json vs_timm/fast-*.md latency_best.json overhead/bench.json overhead/certificate.json trt/bench.json \
  ws/quickstart-summary.json 2>/dev/null)
echo "report archive: $R/report.tar.gz"
exit $rc
