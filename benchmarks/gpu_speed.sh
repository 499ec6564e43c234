#!/usr/bin/env bash
# Training speed on one lent GPU in one device call of at most 10 minutes (issue 18): the plain
# loop (the baseline, in the same call) against the fast path, trials sharing the GPU, compile,
# and a 12-trial VGG16 search at the real dataset's size, projected to 50 trials. Writes
# benchmarks/results/gpu_speed.json (keys in benchmarks/gpu_speed.py) and a log beside it.
#   bash benchmarks/gpu_speed.sh [OUT_JSON]          BUDGET_S=520 by default
#   bash benchmarks/gpu_speed.sh /tmp/smoke.json --smoke   (the plumbing on the CPU, ~2 minutes)
# Runs with the machine's own python3 and torch, as gpu_check.sh does (the device has no network:
# nothing is installed); the repository root goes on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/gpu_speed.json}
shift || true
budget=${BUDGET_S:-520}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export GPU_SPEED_WORK=${GPU_SPEED_WORK:-/tmp/gpu-speed}
export TORCHINDUCTOR_CACHE_DIR=$GPU_SPEED_WORK/inductor  # compiled kernels shared by every worker process
mkdir -p "$GPU_SPEED_WORK" "$(dirname "$out")"
py=python3
[ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null && py=.venv/bin/python
log=${out%.json}.log

fail() {  # the JSON exists whatever happens, saying why it holds no figures
  $py - "$out" "$1" <<'PY'
import json, sys
keys = ["device", "vgg16_images_per_s", "resnet50_images_per_s", "trial_fixed_cost_s", "search_50_minutes", "search_50_projected", "plain_vgg16_images_per_s"]
print(json.dumps({**dict.fromkeys(keys), "errors": {"setup": sys.argv[2]}}, indent=2), file=open(sys.argv[1], "w"))
PY
  exit 1
}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode --format=csv | tee "$log"
$py -c "import torch, fracture_models.engine, tuning.search_space; print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$log" \
  || fail "python cannot import torch and fracture_models with $py (see $log)"

# Leave the machine as found: an MPS daemon the run started is told to quit even if the run is killed.
trap '[ -d "$GPU_SPEED_WORK/mps-pipe" ] && CUDA_MPS_PIPE_DIRECTORY=$GPU_SPEED_WORK/mps-pipe timeout 10 nvidia-cuda-mps-control <<< quit >/dev/null 2>&1 || true' EXIT
timeout -k 10 $((${budget%.*} + 40)) $py benchmarks/gpu_speed.py run --out "$out" --budget-s "$budget" "$@" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
[ -s "$out" ] || fail "gpu_speed.py ended with code $rc before writing any result (see $log)"
cat "$out"
exit "$rc"
