#!/usr/bin/env bash
# Every CUDA path the CPU test suite cannot reach, in one command (at most about 8 minutes on one GPU):
#
#   bash benchmarks/gpu_check.sh
#
# 1. pytest -m cuda tests/test_cuda.py: bf16 autocast training steps, the float16 S_NND bank against
#    float32, channels_last, fused AdamW, torch.compile on a tiny model, the augmentations and S_LH's
#    ridge on the GPU, SyncBatchNorm under torchrun with 2 processes on one GPU;
# 2. python -m benchmarks.train_throughput --device cuda --quick at 32 and at 224 px;
# 3. python -m benchmarks.scores --device cuda --quick;
# 4. one Fashion-MNIST class (class 0, invert) with params/presets/gpu.yaml, epochs cut to
#    GPU_CHECK_EPOCHS (default 20) to fit, into a throw-away MLflow store; prints minutes and AUROC.
#
# Each step has a time limit (a hung step fails, the others still run); the output of every step is
# printed. The last line is
#   gpu_check: passed=<n> failed=<m> skipped=<k> oneclass_minutes=<x> oneclass_auroc_nnd=<y> total_minutes=<z>
# Without CUDA it prints one line saying so and exits 0 (make test and CI stay CPU-only).
#
# Environment: PYTHON (default .venv/bin/python, else python), GPU_CHECK_EPOCHS (20), GPU_CHECK_DATA (the folder holding
# FashionMNIST/raw; default ../shared/data, then shared/data, relative to the repository root).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then  # the project's virtual environment (make venv) if there is one
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=$(command -v python || command -v python3); fi
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing to check, exit 0"
  exit 0
fi

EPOCHS=${GPU_CHECK_EPOCHS:-20}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
passed=0 failed=0 skipped=0 minutes=na auroc=na
start_all=$(date +%s)
"$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'torch', torch.__version__, 'CUDA', torch.version.cuda)"

step() {  # step NAME LIMIT_SECONDS COMMAND...: runs it, counts it, prints its time
  local name=$1 limit=$2 t0 rc
  shift 2
  echo "== gpu_check step $name (limit ${limit}s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  if [ "$rc" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  echo "== gpu_check step $name: $([ "$rc" -eq 0 ] && echo passed || echo "FAILED (exit $rc)") in $(( $(date +%s) - t0 ))s"
}

step cuda-tests 150 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
step throughput-32px 50 "$PY" -m benchmarks.train_throughput --device cuda --size 32 --quick
step throughput-224px 60 "$PY" -m benchmarks.train_throughput --device cuda --size 224 --quick
step scores 40 "$PY" -m benchmarks.scores --device cuda --quick

DATA=${GPU_CHECK_DATA:-}
for candidate in ../shared/data shared/data; do
  if [ -z "$DATA" ] && [ -d "$candidate/FashionMNIST/raw" ]; then DATA=$candidate; fi
done
if [ -z "$DATA" ] || [ ! -d "$DATA/FashionMNIST/raw" ]; then
  echo "== gpu_check step oneclass: SKIPPED (no FashionMNIST/raw under ${DATA:-../shared/data or shared/data}; set GPU_CHECK_DATA)"
  skipped=$((skipped + 1))
else
  export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" CON2_RUNS_DIR="$WORK/runs"
  t0=$(date +%s)
  step oneclass 170 "$PY" -m con2lib.cli run params/presets/gpu.yaml --quiet -p dataset fashionmnist \
    -p data_root "$(cd "$DATA" && pwd)" -p normal_class 0 -p context invert -p epochs "$EPOCHS" \
    -p experiment gpu-check
  minutes=$("$PY" -c "print(f'{($(date +%s) - $t0) / 60:.1f}')")
  auroc=$("$PY" - <<'EOF' 2>/dev/null || echo na
import mlflow
runs = mlflow.search_runs(experiment_names=["gpu-check"], max_results=1, order_by=["attributes.start_time DESC"])
print(f"{100 * runs.loc[0, 'metrics.auroc_nnd']:.2f}" if len(runs) and "metrics.auroc_nnd" in runs else "na")
EOF
)
  echo "oneclass: Fashion-MNIST class 0, invert, gpu preset, $EPOCHS epochs: $minutes minutes, AUROC S_NND $auroc"
fi

rm -rf "$WORK"
total=$("$PY" -c "print(f'{($(date +%s) - $start_all) / 60:.1f}')")
echo "gpu_check: passed=$passed failed=$failed skipped=$skipped oneclass_minutes=$minutes oneclass_auroc_nnd=$auroc total_minutes=$total"
[ "$failed" -eq 0 ]
