from __future__ import annotations

import pytest
import torch

from fracture_models.config import TrainConfig
from fracture_models.errors import UserError, WeightsUnavailableError
from fracture_models.models import StudyCNN, architecture, create_model, list_models, resolve_weights


def test_registry_lists_the_study_architectures():
    assert list_models() == ["cnn", "resnet50", "vgg16"]


@pytest.mark.parametrize("name", list_models())
def test_forward_and_backward_at_small_size(name: str):
    torch.manual_seed(0)
    model = create_model(name, weights="none", image_size=32)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 2)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_each_architecture_starts_where_the_study_started():
    # The study fine-tuned ImageNet-pretrained ResNet50 and VGG16 and trained its CNN from scratch.
    assert {name: architecture(name).default_weights for name in list_models()} == {
        "cnn": "none",
        "resnet50": "imagenet",
        "vgg16": "imagenet",
    }
    assert resolve_weights("vgg16", None) == "imagenet" and resolve_weights("vgg16", "none") == "none"
    assert TrainConfig(arch="resnet50").weights == "imagenet" and TrainConfig(arch="cnn").weights == "none"


def test_cnn_matches_the_study_table_at_224_px():
    model = StudyCNN(image_size=224)
    assert sum(p.numel() for p in model.parameters()) == 52_361_346
    assert model.classifier[1].in_features == 256 * 14 * 14 == 50_176
    assert StudyCNN(image_size=64).classifier[1].in_features == 256 * 4 * 4


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(UserError, match="cnn, resnet50, vgg16"):
        create_model("alexnet")


def test_cnn_has_no_pretrained_weights():
    with pytest.raises(UserError, match="--weights none"):
        create_model("cnn", weights="imagenet")


def test_imagenet_weights_offline_fail_with_the_cache_location(tmp_path, monkeypatch):
    # An empty torch hub cache and a proxy nobody listens on: the real download path, offline.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(WeightsUnavailableError) as info:
        create_model("resnet50", weights="imagenet", image_size=32)
    message = str(info.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in message
    assert "--weights none" in message and "--weights /path/to/resnet50-11ad3fa6.pth" in message


def test_weights_from_a_local_file_load_into_the_backbone(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(1)
    reference = resnet50()
    path = tmp_path / "resnet50-11ad3fa6.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet50", weights=str(path), image_size=32)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 2
    with pytest.raises(UserError, match="does not exist"):
        create_model("vgg16", weights=str(tmp_path / "missing.pth"))
