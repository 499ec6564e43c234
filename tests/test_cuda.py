"""The CUDA path: mixed precision, channels_last, a GPU-resident cache, checkpoints that load
on the CPU, Grad-CAM on the device. Skipped without a GPU; run on a lent GPU machine
(benchmarks/gpu_check.sh)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fracture_models.config import TrainConfig
from fracture_models.data import load_dataset
from fracture_models.engine import (
    autocast_dtype,
    build_training,
    fit,
    load_checkpoint,
    make_checkpoint,
    make_loaders,
    predict,
    restore_training,
    save_checkpoint,
)
from fracture_models.explain import gradcam
from fracture_models.loader import BatchLoader
from fracture_models.models import create_model, list_models

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("arch", list_models())
def test_training_on_cuda_and_the_checkpoint_on_the_cpu_agree(arch: str, small_download, tmp_path):
    data = load_dataset(small_download, 48)
    cuda = torch.device("cuda")
    state = build_training(TrainConfig(arch=arch, image_size=48, epochs=2, batch_size=8, weights="none"), cuda)
    assert autocast_dtype(cuda) in (torch.bfloat16, torch.float16) and state.channels_last
    train, val = make_loaders(state, data.train, data.val)
    assert train.images.is_cuda and val.labels.is_cuda  # the uint8 cache lives on the GPU
    history = fit(state, train, val)
    assert len(history) == 2 and all(np.isfinite(row["train_loss"]) for row in history)
    path = save_checkpoint(make_checkpoint(state), tmp_path / "checkpoint.pt")
    gpu_y, gpu_p, _ = predict(state, val)

    cpu_state = build_training(TrainConfig(arch=arch, image_size=48, epochs=2, batch_size=8, weights="none"), torch.device("cpu"))
    restore_training(cpu_state, load_checkpoint(path))  # weights_only=True, map_location cpu
    cpu_y, cpu_p, _ = predict(cpu_state, BatchLoader(data.val, 8))
    assert (gpu_y == cpu_y).all()
    assert np.abs(gpu_p - cpu_p).max() < 0.05  # bf16 autocast on the GPU vs float32 on the CPU


@pytest.mark.parametrize("arch", list_models())
def test_gradcam_on_cuda(arch: str):
    model = create_model(arch, weights="none", image_size=64).cuda().eval()
    heat = gradcam(model, arch, torch.randn(2, 3, 64, 64, device="cuda"), 1)
    assert heat.shape == (2, 64, 64) and float(heat.max()) <= 1.0
