"""Where a trial ran: its node, its GPUs and its CPU threads, so a user can tell from its MLflow run.

A trial reports its devices (`devices()`) in its first result after it starts or restarts; Ray
Tune fills in the node's address and host name in every result. The driver's MLflow callback
tags the trial's run with the five (`placement_of`), again when a retried trial lands elsewhere.
Light on purpose: trials of any trainable import it without torch or MLflow.
"""

from __future__ import annotations

import os
from typing import Mapping

NODE_IP, HOSTNAME = "node_ip", "hostname"  # filled in by Ray Tune in every result
GPU_IDS = "gpu_ids"  # the GPUs Ray gave the trial, "0,1"; "" for a CPU trial
CUDA_VISIBLE_DEVICES = "cuda_visible_devices"  # what the trial's process sees, as Ray set it
OMP_NUM_THREADS = "omp_num_threads"  # torch's CPU threads: Ray sets one per CPU the trial holds
PLACEMENT_KEYS = (NODE_IP, HOSTNAME, GPU_IDS, CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS)  # also the MLflow tag names


def devices() -> dict[str, str]:
    """The GPUs of the calling trial, as Ray assigned them and as CUDA will number them, and its
    CPU threads as Ray set them."""
    import ray

    return {
        GPU_IDS: ",".join(str(gpu) for gpu in ray.get_gpu_ids()),
        CUDA_VISIBLE_DEVICES: os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        OMP_NUM_THREADS: os.environ.get("OMP_NUM_THREADS", ""),
    }


def placement_of(result: Mapping) -> dict[str, str] | None:
    """The placement a result carries: only a trial's first result after it (re)started has one."""
    if GPU_IDS not in result:
        return None
    return {key: str(result.get(key, "")) for key in PLACEMENT_KEYS}
