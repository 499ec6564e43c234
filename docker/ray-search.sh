#!/bin/sh
# Entry point of the compose service `search`: one `python -m tuning.run` on the stack's Ray
# cluster. A Ray driver must run on a Ray node, so the container first joins the cluster as a
# node with no CPUs and no GPUs (every trial goes to a worker), then becomes the search.
# Arguments go to tuning.run after the stack's defaults, so a --storage-path or --optuna-storage
# given here wins.
set -eu
: "${RAY_HEAD_ADDRESS:?RAY_HEAD_ADDRESS (host:port of the Ray head) is not set}"
: "${TUNE_STORAGE_PATH:?TUNE_STORAGE_PATH (the experiments folder every node sees) is not set}"
: "${OPTUNA_STORAGE_URL:?OPTUNA_STORAGE_URL (the Optuna database URL) is not set}"

case "${1:-}" in
    "" | -h | --help) exec python -m tuning.run --help ;;
esac

ray start --address="$RAY_HEAD_ADDRESS" --num-cpus=0 --num-gpus=0 >&2
exec python -m tuning.run --address "$RAY_HEAD_ADDRESS" \
    --storage-path "$TUNE_STORAGE_PATH" --optuna-storage "$OPTUNA_STORAGE_URL" "$@"
