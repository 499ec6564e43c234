#!/usr/bin/env bash
# The search itself on a lent GPU machine: `python -m tuning.run` end to end, Ray placing trials
# on the GPU (see benchmarks/README.md for the figures).
# The machine's image has Python 3.12 and torch but not Ray, Optuna or MLflow: they travel as one
# xz archive of site-packages, made here by benchmarks/README.md's recipe, in the git-ignored
# folder .gpusite (the device tool's carry).
#   bash benchmarks/gpu_tune_check.sh OUT_DIR
set -uo pipefail
out=${1:-/tmp/gpu-tune}
mkdir -p "$out" /tmp/site
tar xJf .gpusite/site312.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FRACTURE_CACHE_DIR=/tmp/fracture-cache FRACTURE_MLFLOW_DIR=/tmp/mlflow
summary="$out/summary.txt"
python3 -c "import ray, optuna, mlflow, torch; print('ray', ray.__version__, 'optuna', optuna.__version__, 'mlflow', mlflow.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(), 'cpus', __import__('os').cpu_count())" 2>&1 | tee "$summary"
python3 -c "import tuning.run, tuning.tracking" || exit 1

python3 -m fracture_models.synthetic /tmp/data64 --train 2000 --val 500 --test 500 --image-size 128 --seed 1 | tail -1
python3 -m fracture_models.synthetic /tmp/data224 --train 1000 --val 300 --test 300 --image-size 256 --seed 2 | tail -1

# GPU memory and processes on the GPU, once a second, beside each search.
watch_gpu() { while sleep 1; do echo "$(date +%s) $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l) $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits)"; done; }
search() {
  local name=$1; shift
  watch_gpu > "/tmp/gpu-$name.txt" & local watcher=$!
  local start=$(date +%s.%N)
  python3 -m tuning.run --storage-path /tmp/runs --name "$name" "$@" > "/tmp/runs-$name.log" 2>&1
  local rc=$? end=$(date +%s.%N)
  kill $watcher
  local most=$(awk '{print $2}' "/tmp/gpu-$name.txt" | sort -n | tail -1)
  local util=$(awk -F'[ ,]+' '$2 > 0 {s += $3; n++} END {if (n) printf "%.0f", s / n}' "/tmp/gpu-$name.txt")
  echo "$name: rc $rc, wall $(python3 -c "print(round($end - $start, 1))") s, most processes on the GPU at once ${most:-0}, mean GPU utilisation while busy ${util:-0}%" | tee -a "$summary"
  grep -o 'Logical resource usage.*' "/tmp/runs-$name.log" | sort -u | tail -2 >> "$summary"
  sed -n '/^Search /,/^Winner on test, for/p' "/tmp/runs-$name.log" | head -40 >> "$summary"
  grep -m3 -i 'error' "/tmp/runs-$name.log" >> "$summary"
}

echo "== a request the machine can never satisfy" | tee -a "$summary"
search impossible --synthetic --arch cnn --num-samples 2 --epochs 1 --image-size 32 --gpus-per-trial 2
echo "== CNN at 64 px, 8 trials x 10 epochs, no early stopping: 4 trials per GPU, then 1" | tee -a "$summary"
search cnn-quarter --data-dir /tmp/data64 --arch cnn --num-samples 8 --image-size 64 --gpus-per-trial 0.25 --cpus-per-trial 2 --scheduler none
search cnn-whole --data-dir /tmp/data64 --arch cnn --num-samples 8 --image-size 64 --gpus-per-trial 1 --cpus-per-trial 2 --scheduler none
echo "== VGG16 at 224 px, the defaults (1 GPU per trial, ASHA), 6 trials x 4 epochs" | tee -a "$summary"
search vgg16 --data-dir /tmp/data224 --arch vgg16 --weights none --num-samples 6 --epochs 4 --image-size 224 --cpus-per-trial 4

for name in cnn-quarter cnn-whole vgg16; do cp "/tmp/runs/$name/summary.json" "$out/summary-$name.json" 2>/dev/null; done
tar czf "$out/logs.tgz" -C /tmp $(cd /tmp && ls runs-*.log gpu-*.txt) 2>/dev/null
