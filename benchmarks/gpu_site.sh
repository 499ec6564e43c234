#!/usr/bin/env bash
# Packs what benchmarks/gpu_tune_check.sh needs on the lent GPU machine and its image lacks
# (Ray, Optuna, MLflow, captum and their own needs, for Python 3.12) into .gpusite/site312.tar.xz,
# under the device tool's 64 MiB carry limit: the image's own packages are left out, and so are
# parts of Ray and MLflow that a search never loads (Ray's Java jars and RLlib, MLflow's web UI).
#   bash benchmarks/gpu_site.sh   # then: device run with carry [".gpusite"]
set -euo pipefail
# The GPU image's packages (device tool's KINDS.md, read 2026-11-17), besides torch's CUDA wheels.
on_image="aiohttp attrs click cloudpickle filelock fsspec grpcio jinja2 markupsafe matplotlib msgpack numpy
packaging pandas pillow protobuf psutil pyarrow pyyaml requests scikit-learn scipy six sympy torch
torchvision triton typing-extensions urllib3 werkzeug aiosignal frozenlist multidict yarl propcache
aiohappyeyeballs certifi charset-normalizer idna python-dateutil joblib threadpoolctl contourpy cycler
fonttools kiwisolver pyparsing networkx mpmath tqdm rich pygments markdown-it-py mdurl zipp anyio h11
httpx httpcore setuptools wheel"
work=$(mktemp -d)
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d "$work/all" \
  'ray[tune]==2.60.0' 'optuna==5.0.0' 'mlflow==3.17.2'
# captum's own needs (torch, numpy, matplotlib) are on the image: not torch's CUDA wheels again.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d "$work/all" 'captum>=0.7'
mkdir "$work/need"
for wheel in "$work"/all/*.whl; do
  name=$(basename "$wheel" | cut -d- -f1 | tr '_.' '--' | tr 'A-Z' 'a-z')
  case " $(echo $on_image) " in *" $name "*) continue ;; esac
  case "$name" in nvidia-*) continue ;; esac
  cp "$wheel" "$work/need/"
done
python3 -m pip install -q --target "$work/site" --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
  --implementation cp $platforms "$work"/need/*.whl
rm -rf "$work/site/ray/jars" "$work/site/ray/rllib" "$work/site/mlflow/server/js/build"
find "$work/site" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p .gpusite
tar cf - -C "$work/site" . | xz -T0 -8 > .gpusite/site312.tar.xz
rm -rf "$work"
ls -l .gpusite/site312.tar.xz
