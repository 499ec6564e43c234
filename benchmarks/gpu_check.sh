#!/usr/bin/env bash
# The GPU checks, in one run on a lent GPU machine (see benchmarks/README.md for the figures):
# the CUDA tests, training throughput per architecture, the data path, and how many CNN trials
# can share one GPU (the case for --gpus-per-trial 0.25).
#   bash benchmarks/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:-/tmp/gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 FRACTURE_CACHE_DIR=/tmp/fracture-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, torchvision, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$out/gpu.txt"

echo "== CUDA tests"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_clinical.py tests/test_engine.py tests/test_models.py 2>&1 | tail -15 | tee "$out/tests.txt"

echo "== training throughput"
python3 benchmarks/train_throughput.py --sizes 64 224 --batch-size 32 --min-seconds 4 2>&1 | tee "$out/throughput.txt"

echo "== data path"
python3 benchmarks/data_pipeline.py --images 600 --epochs 3 --workers 8 2>&1 | tail -8 | tee "$out/data_pipeline.txt"

echo "== CNN trials sharing one GPU (224 px, batch 32): 1, 2 and 4 at once"
for n in 1 2 4; do
  for i in $(seq "$n"); do
    python3 benchmarks/train_throughput.py --archs cnn --sizes 224 --batch-size 32 --min-seconds 10 > "$out/share-$n-$i.txt" 2>&1 &
  done
  wait
  total=$(grep -h '^| cnn' "$out"/share-"$n"-*.txt | awk -F'|' '{s += $5} END {print s}')
  echo "$n at once: total $total images/s (channels_last)" | tee -a "$out/sharing.txt"
done
