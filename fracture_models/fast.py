"""Speed levers for the training loop that leave the study's recipe alone.

Each lever is a `TrainConfig` setting (see there for the defaults) and none changes what is
trained: batch size, Adam, StepLR and the augmentation stay as they are.

* `MetricTally`: loss and correct counts summed on the device (float64 and int64), read once per
  epoch. The sums are the same IEEE operations as the per-batch `.item()` path, so the epoch's
  loss and accuracy are identical, without a host sync per step.
* `make_adam`: fused Adam on CUDA (one kernel for all parameters), or foreach / for-loop.
* `compiled_forward`: `torch.compile` of the model for full training batches (partial last
  batches and validation run eagerly, so one graph per process). A process keeps its compiled
  model and hands it to the next trial of the same architecture, size and device, with that
  trial's freshly initialised weights copied in: with Ray's reused actors the compile is paid
  once per worker process, and CUDA graphs ("reduce-overhead") keep their memory addresses.
  Across processes, torch's on-disk Inductor cache (TORCHINDUCTOR_CACHE_DIR) makes later
  compiles cheaper.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn

if TYPE_CHECKING:
    from fracture_models.config import TrainConfig

logger = logging.getLogger(__name__)

ADAM_CHOICES = ("auto", "fused", "foreach", "for-loop")
COMPILE_CHOICES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_speed_settings(config: "TrainConfig") -> None:
    """Fail at configuration time, naming the setting and its choices."""
    if config.adam not in ADAM_CHOICES:
        raise ValueError(f"adam must be one of {', '.join(ADAM_CHOICES)}; got {config.adam!r}")
    if config.compile not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)}; got {config.compile!r}")
    if int(config.val_batch_factor) < 1:
        raise ValueError(f"val_batch_factor must be >= 1; got {config.val_batch_factor}")


def adam_implementation(choice: str, device: torch.device) -> str:
    """`auto`: fused on CUDA; on the CPU torch's own default (for-loop), which measured as fast."""
    if choice == "auto":
        return "fused" if device.type == "cuda" else "for-loop"
    return choice


def make_adam(parameters: Iterable[nn.Parameter], lr: float, choice: str, device: torch.device) -> torch.optim.Adam:
    implementation = adam_implementation(choice, device)
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[implementation]
    return torch.optim.Adam(parameters, lr=lr, **options)


class MetricTally:
    """Sum of per-image loss and of correct predictions, kept on the device until read."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0  # known on the host from the batch shapes: no sync

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.numel()
        # float(loss) * n then a float64 add: the same operations as the `.item()` path.
        self.loss_sum += loss.detach().to(torch.float64) * n
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.seen += n

    def read(self) -> tuple[float, float]:
        """(mean loss, accuracy): the one host sync of the epoch."""
        seen = max(self.seen, 1)
        return self.loss_sum.item() / seen, int(self.correct.item()) / seen


# ---------------------------------------------------------------------------------------------
# torch.compile, paid once per process


@dataclass
class _CompiledModel:
    model: nn.Module
    compiled: Any
    owner: weakref.ref | None = None


_PROCESS_MODELS: dict[tuple, _CompiledModel] = {}


def _key(config: "TrainConfig", device: torch.device, channels_last: bool) -> tuple:
    return (config.arch, config.image_size, str(device), channels_last, config.compile)


def reuse_compiled_model(config: "TrainConfig", device: torch.device, channels_last: bool, fresh: nn.Module) -> nn.Module:
    """The process's compiled model for this key with `fresh`'s weights, or `fresh` itself.

    Only a model whose last trial is over (its training state collected) is handed on, so two
    live training states never share weights."""
    entry = _PROCESS_MODELS.get(_key(config, device, channels_last))
    if entry is None or (entry.owner is not None and entry.owner() is not None):
        return fresh
    with torch.no_grad():
        for target, source in zip(entry.model.state_dict().values(), fresh.state_dict().values(), strict=True):
            target.copy_(source)  # in place: compiled code and CUDA graphs keep their addresses
    entry.model.train()
    return entry.model


def compiled_forward(config: "TrainConfig", device: torch.device, channels_last: bool, model: nn.Module, owner: object):
    """`torch.compile(model)`, kept for the process's next trials; `owner` is the training state."""
    if config.compile == "off":
        return None
    key = _key(config, device, channels_last)
    entry = _PROCESS_MODELS.get(key)
    if entry is not None and entry.model is model:  # handed on by `reuse_compiled_model`
        entry.owner = weakref.ref(owner)
        return entry.compiled
    compiled = torch.compile(model, mode=None if config.compile == "default" else config.compile, dynamic=False)
    if entry is None:  # the first of its kind in this process: kept for the trials after it
        _PROCESS_MODELS[key] = _CompiledModel(model, compiled, weakref.ref(owner))
    return compiled


def uses_cuda_graphs(config: "TrainConfig", device: torch.device) -> bool:
    return device.type == "cuda" and config.compile in ("reduce-overhead", "max-autotune")
