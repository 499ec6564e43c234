"""Grad-CAM heatmaps (captum's LayerGradCam) for any registered architecture.

The target layer is a fact of the architecture's registry entry (`gradcam_layer`): by default
the last convolution (the CNN, VGG16), the last residual stage for ResNet50 (as pytorch-grad-cam
and the Grad-CAM paper use for these families).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from fracture_models.augment import to_model_input
from fracture_models.labels import CLASS_NAMES
from fracture_models.models import architecture


def gradcam_layer(model: nn.Module, arch: str) -> nn.Module:
    return architecture(arch).gradcam_layer(model)


def _without_inplace(model: nn.Module) -> nn.Module:
    """A copy whose ReLUs do not overwrite the hooked layer's output (autograd needs it)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


def gradcam(model: nn.Module, arch: str, inputs: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
    """Heatmaps [N, H, W] in 0..1 at the input's size for `target` class(es), float32 on the CPU."""
    from captum.attr import LayerAttribution, LayerGradCam

    model = _without_inplace(model).eval()
    layer = gradcam_layer(model, arch)
    inputs = inputs.float().requires_grad_(True)
    with torch.autocast(inputs.device.type, enabled=False):
        attribution = LayerGradCam(model, layer).attribute(inputs, target=target, relu_attributions=True)
    heat = LayerAttribution.interpolate(attribution.detach(), tuple(inputs.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    heat = heat.clamp_min(0)
    peak = heat.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (heat / peak).float().cpu()


def pick_examples(labels: np.ndarray, probability: np.ndarray, per_group: int = 2, threshold: float = 0.5) -> list[dict]:
    """Up to `per_group` test images per (true class, correct/wrong), the most confident first."""
    labels, probability = np.asarray(labels), np.asarray(probability)
    predicted = (probability >= threshold).astype(np.int64)
    confidence = np.where(predicted == 1, probability, 1 - probability)
    chosen = []
    for true in range(len(CLASS_NAMES)):
        for correct in (True, False):
            index = np.flatnonzero((labels == true) & ((predicted == labels) == correct))
            for i in index[np.argsort(-confidence[index], kind="stable")][:per_group]:
                chosen.append(
                    {
                        "index": int(i),
                        "true": int(true),
                        "predicted": int(predicted[i]),
                        "probability": float(probability[i]),
                        "correct": correct,
                    }
                )
    return chosen


def heatmap_panels(
    model: nn.Module, arch: str, images: torch.Tensor, examples: list[dict], device: torch.device, channels_last: bool = False
) -> list[dict]:
    """Grad-CAM of the predicted class for each chosen example, ready for `plots.plot_heatmap_grid`."""
    if not examples:
        return []
    batch = images[[e["index"] for e in examples]]
    inputs = to_model_input(batch.to(device))
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    targets = torch.tensor([e["predicted"] for e in examples], device=device)
    heat = gradcam(model, arch, inputs, targets)
    panels = []
    for e, image, h in zip(examples, batch, heat):
        verdict = "correct" if e["correct"] else "wrong"
        caption = f"true {CLASS_NAMES[e['true']]}, {verdict}\np(fractured) {e['probability']:.2f}; map for '{CLASS_NAMES[e['predicted']]}'"
        panels.append({"image": image[0].float().numpy() / 255.0, "heatmap": h.numpy(), "caption": caption})
    return panels
