"""The fast path trains the same model as the plain loop (fracture_models.fast).

Device-side metric sums and larger validation batches must give the plain loop's figures; fused
Adam the same step; torch.compile (on the CPU here, tiny CNN at 32 px) the same first step, a
training run within noise of the eager one, and its compile paid once per process.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from fracture_models.config import TrainConfig
from fracture_models.data import load_dataset
from fracture_models.engine import build_training, evaluate, fit, make_loaders, predict
from fracture_models.loader import BatchLoader
from fracture_models.synthetic import SyntheticSpec, generate

SIZE = 32
RECIPE = dict(arch="cnn", image_size=SIZE, batch_size=16, seed=7, lr=1e-3)


@pytest.fixture(scope="module")
def learnable(tmp_path_factory: pytest.TempPathFactory):
    """Small enough for seconds per epoch on 2 cores; easy enough to learn something in 3 epochs."""
    root = generate(tmp_path_factory.mktemp("fast"), SyntheticSpec(train=192, val=96, test=8, image_size=40, seed=3, difficulty=0.5))
    return load_dataset(root, SIZE)


def _fit(dataset, epochs: int, **levers):
    state = build_training(TrainConfig(epochs=epochs, **RECIPE, **levers), torch.device("cpu"))
    return state, fit(state, *make_loaders(state, dataset.train, dataset.val))


def _before_batch_norm(name: str) -> bool:
    """A convolution's bias in front of batch norm has no effect on the output, so its gradient is
    rounding noise, which Adam (dividing by the gradient's own scale) turns into full-size steps."""
    return name.startswith("features.") and name.endswith(".bias") and name.split(".")[1] in {"0", "4", "8", "12"}


def _figures(history):
    return [{k: v for k, v in row.items() if k != "train_images_per_second"} for row in history]


def test_device_side_sums_give_the_per_batch_item_figures_bit_for_bit(learnable):
    _, synced = _fit(learnable, 2, sync_every_batch=True, val_batch_factor=1)
    _, device = _fit(learnable, 2, sync_every_batch=False, val_batch_factor=1)
    assert _figures(device) == _figures(synced)
    assert 0 < device[-1]["train_loss"] < 5 and 0 <= device[-1]["train_accuracy"] <= 1


def test_larger_validation_batches_give_the_same_metrics(learnable):
    state, _ = _fit(learnable, 1)
    assert make_loaders(state, learnable.train, learnable.val)[1].batch_size == 4 * RECIPE["batch_size"]
    small = BatchLoader(learnable.val, RECIPE["batch_size"])
    large = BatchLoader(learnable.val, 4 * RECIPE["batch_size"])
    y_small, p_small, loss_small = predict(state, small)
    y_large, p_large, loss_large = predict(state, large)
    assert (y_small == y_large).all()
    np.testing.assert_allclose(p_large, p_small, rtol=0, atol=1e-6)
    assert loss_large == pytest.approx(loss_small, rel=1e-6)
    by_small, by_large = evaluate(state, small), evaluate(state, large)
    for name in ("accuracy", "fracture_sensitivity", "fracture_specificity", "fracture_f1", "roc_auc", "confusion_matrix"):
        assert by_large[name] == by_small[name], name


def test_fused_adam_takes_the_for_loop_step(learnable):
    # The optimiser's step, on the contiguous layout (the layout's own rounding is not its subject).
    x, y = next(iter(BatchLoader(learnable.train, RECIPE["batch_size"])))
    states = [
        build_training(TrainConfig(**RECIPE, adam=adam, channels_last=False), torch.device("cpu"))
        for adam in ("for-loop", "fused", "foreach")
    ]
    assert [bool(s.optimizer.defaults.get("fused")) for s in states] == [False, True, False]
    for state in states:
        for _ in range(3):
            state.optimizer.zero_grad()
            torch.nn.functional.cross_entropy(state.model(x), y).backward()
            state.optimizer.step()
    reference = dict(states[0].model.named_parameters())  # running means carry the pre-norm biases
    for state in states[1:]:
        for name, value in state.model.named_parameters():
            if not _before_batch_norm(name):
                torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-6, msg=name)


def test_unknown_lever_values_fail_and_old_configs_load():
    with pytest.raises(ValueError, match="compile must be one of"):
        TrainConfig(compile="fast")
    with pytest.raises(ValueError, match="adam must be one of"):
        TrainConfig(adam="lamb")
    with pytest.raises(ValueError, match="val_batch_factor"):
        TrainConfig(val_batch_factor=0)
    before = {
        k: v for k, v in TrainConfig(arch="cnn").to_dict().items() if k not in ("sync_every_batch", "adam", "val_batch_factor", "compile")
    }
    assert TrainConfig.from_dict(before) == TrainConfig(arch="cnn")  # a checkpoint from before the levers


def test_compiled_training_matches_eager_and_compiles_once_per_process(learnable):
    from torch._dynamo.utils import counters

    eager = build_training(TrainConfig(epochs=3, **RECIPE), torch.device("cpu"))
    compiled = build_training(TrainConfig(epochs=3, **RECIPE, compile="default"), torch.device("cpu"))
    assert compiled.compiled is not None and eager.compiled is None
    # The first step: same logits and gradients, up to kernel rounding.
    # The layout a trial feeds (channels_last for the CNN): another layout would be another graph.
    loader = BatchLoader(learnable.train, RECIPE["batch_size"], train=True, aug_strength=1.0, seed=7, channels_last=eager.channels_last)
    x, y = next(iter(loader))
    grads = []
    for state, forward in ((eager, eager.model), (compiled, compiled.compiled)):
        logits = forward(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        grads.append((logits.detach(), {n: p.grad.clone() for n, p in state.model.named_parameters()}))
        state.model.zero_grad(set_to_none=True)

    def relative(a, b):
        return float((a - b).norm() / b.norm())

    assert relative(grads[1][0], grads[0][0]) < 1e-4  # measured ~1e-6
    for name, grad in grads[0][1].items():
        if not _before_batch_norm(name):
            assert relative(grads[1][1][name], grad) < 1e-2, name  # measured 2e-6 to 1.4e-3 (the first layer's, through batch norm)
    eager_history = fit(eager, *make_loaders(eager, learnable.train, learnable.val))
    graphs = counters["stats"]["unique_graphs"]
    compiled_history = fit(compiled, *make_loaders(compiled, learnable.train, learnable.val))
    # Adam turns rounding noise on near-zero gradients into full steps, so the runs part ways a
    # little; they must end within a few validation images of each other (96 images).
    for row_eager, row_compiled in zip(eager_history, compiled_history):
        assert row_compiled["train_loss"] == pytest.approx(row_eager["train_loss"], rel=0.05)
    assert abs(compiled_history[-1]["val_accuracy"] - eager_history[-1]["val_accuracy"]) <= 0.07
    assert abs(compiled_history[-1]["val_loss"] - eager_history[-1]["val_loss"]) <= 0.05
    assert counters["stats"]["unique_graphs"] == graphs  # no graph for the partial last batch or validation

    # The next trial in this process gets the compiled model with its own fresh weights: no new compile.
    model = compiled.model
    del compiled, state  # the trial is over
    gc.collect()
    again = build_training(TrainConfig(epochs=1, **RECIPE, compile="default"), torch.device("cpu"))
    assert again.model is model
    fresh = build_training(TrainConfig(**RECIPE), torch.device("cpu")).model.state_dict()
    for name, value in fresh.items():
        assert torch.equal(again.model.state_dict()[name], value), name  # the seeded initialisation, not the old weights
    fit(again, *make_loaders(again, learnable.train, learnable.val))
    assert counters["stats"]["unique_graphs"] == graphs
    # While a trial still holds the compiled model, another gets its own.
    other = build_training(TrainConfig(epochs=1, **RECIPE, compile="default"), torch.device("cpu"))
    assert other.model is not again.model
