from __future__ import annotations

import pytest
import torch

from fracture_models.augment import IMAGENET_MEAN, IMAGENET_STD, Augmentation, to_model_input
from fracture_models.data import load_split
from fracture_models.loader import BatchLoader


@pytest.fixture
def batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8, generator=g)


def test_strength_zero_is_identity_and_grey_becomes_normalised_rgb(batch: torch.Tensor):
    plain = to_model_input(batch)
    assert plain.shape == (6, 3, 32, 32) and plain.dtype == torch.float32
    assert torch.equal(to_model_input(batch, augmentation=Augmentation.at_strength(0.0)), plain)
    for c in range(3):  # each channel is the same grey, normalised with that channel's statistics
        expected = (batch[:, 0].float() / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(plain[:, c], expected, atol=1e-6)


def test_baseline_amounts_are_documented_values():
    base = Augmentation.at_strength(1.0)
    assert (base.flip_probability, base.max_rotation_degrees, base.brightness, base.contrast) == (0.5, 15.0, 0.2, 0.2)
    assert Augmentation.at_strength(2.0).max_rotation_degrees == 30.0
    assert Augmentation.at_strength(0.0).is_identity
    with pytest.raises(ValueError):
        Augmentation.at_strength(-1)


def test_augmentation_is_seeded_and_grows_with_strength(batch: torch.Tensor):
    plain = to_model_input(batch)

    def run(strength: float, seed: int) -> torch.Tensor:
        return to_model_input(batch, augmentation=Augmentation.at_strength(strength), generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1.0, 7), run(1.0, 7))
    assert not torch.equal(run(1.0, 7), run(1.0, 8))
    weak = (run(0.25, 3) - plain).abs().mean()
    strong = (run(2.0, 3) - plain).abs().mean()
    assert 0 < weak < strong


def test_evaluation_never_augments(small_download):
    from fracture_models.data import resolve_dataset_root

    split = load_split(resolve_dataset_root(small_download), "val", 32)
    loader = BatchLoader(split, 4, train=False, aug_strength=3.0)
    first = torch.cat([x for x, _ in loader])
    loader.set_epoch(5)
    assert torch.equal(first, torch.cat([x for x, _ in loader]))
    assert torch.equal(first, to_model_input(split.images))
    train = BatchLoader(split, 4, train=True, aug_strength=1.0, seed=0)
    labels = torch.cat([y for _, y in train])
    assert sorted(labels.tolist()) == sorted(split.labels.tolist())  # every image once per epoch
