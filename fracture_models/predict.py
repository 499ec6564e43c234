"""Fracture probabilities for image files, preprocessed exactly as the training data is.

    python -m fracture_models.predict --model MODEL IMAGE_OR_FOLDER... [--gradcam DIR]

MODEL is a checkpoint file (a search trial's or `fracture_models.train`'s checkpoint.pt, or the
weights-only model file an MLflow model of this project holds) or a model URI:
`models:/fracture-vgg16@champion`, `models:/<logged model id>`, `runs:/<run id>/model`. Files are
read here with plain PyTorch. A URI goes to the loader registered for its scheme in the entry-point
group `fracture_tune.model_sources` (the tuning package registers MLflow's), so this module never
imports MLflow.

Every image is decoded, resized and windowed by the data module's own functions (`decode_image`:
EXIF rotation, 16-bit grey windowed min..max to 0..255, bilinear resize to the model's training
size; `stack_images`), normalised by `to_model_input` (ImageNet mean and std, grey to 3 channels)
and predicted by evaluation's loop (`engine.predict`). One JSON line per image goes to stdout:

    {"path": "a.png", "fracture_probability": 0.93, "decision": "fractured", "threshold": 0.41}

`decision` is `fractured` (label 1) when the probability reaches the model's operating threshold,
which travels with the model: chosen on validation for a search's winner and a single training
run, 0.5 where none was chosen. A file that cannot be read or decoded gets
`{"path": ..., "error": ...}` and the others go on; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from fracture_models.config import TrainConfig
from fracture_models.data import IMAGE_EXTENSIONS, DecodedSplit, decode_file, decode_image, stack_images
from fracture_models.engine import TrainingState, build_training, load_checkpoint, predict, select_device
from fracture_models.errors import UserError
from fracture_models.labels import CLASS_NAMES, NEGATIVE_LABEL, POSITIVE_CLASS, POSITIVE_LABEL
from fracture_models.loader import BatchLoader

DEFAULT_THRESHOLD = 0.5
MODEL_FORMAT = "fracture-tune model"  # the weights-only model file
MODEL_FORMAT_VERSION = 1
MODEL_SOURCES = "fracture_tune.model_sources"  # entry-point group: URI scheme -> loader(uri, device=...)
BATCH_SIZE = 32
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold at which a fracture probability becomes the decision `fractured`."""

    threshold: float = DEFAULT_THRESHOLD
    chosen_on: str | None = None  # "val" where it was chosen on validation; None: the 0.5 default
    target_sensitivity: float | None = None

    @classmethod
    def from_clinical(cls, report: Mapping) -> "OperatingPoint":
        """The operating point of a clinical report (`fracture_models.clinical`): chosen on validation."""
        point = report["operating_point"]
        return cls(float(point["val"]["threshold"]), point["chosen_on"], float(point["target_sensitivity"]))

    @classmethod
    def of(cls, checkpoint: Mapping) -> "OperatingPoint":
        """The point a checkpoint or model file carries; 0.5 where none was chosen."""
        return cls(**checkpoint["operating_point"]) if checkpoint.get("operating_point") else cls()

    def to_dict(self) -> dict:
        return asdict(self)

    def decide(self, probability: float) -> str:
        return CLASS_NAMES[POSITIVE_LABEL] if probability >= self.threshold else CLASS_NAMES[NEGATIVE_LABEL]


def model_file(checkpoint: Mapping, operating_point: OperatingPoint | None = None) -> dict:
    """What prediction needs of a checkpoint: the weights, config, epoch and that epoch's validation
    metrics, with the operating point and the class names. No optimiser, scheduler or scaler state."""
    return {
        "format": MODEL_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "model": checkpoint["model"],
        "config": dict(checkpoint["config"]),
        "epoch": int(checkpoint["epoch"]),
        "metrics": dict(checkpoint.get("metrics") or {}),
        "class_names": list(CLASS_NAMES),
        "positive_class": POSITIVE_CLASS,
        "operating_point": (operating_point or OperatingPoint.of(checkpoint)).to_dict(),
    }


@dataclass
class FracturePredictor:
    """A trained model with the facts its inputs and decisions need (architecture, training size,
    operating point); `predict` takes image paths or bytes."""

    state: TrainingState
    operating_point: OperatingPoint
    source: str
    batch_size: int = BATCH_SIZE

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping, *, source: str, device: torch.device | None = None) -> "FracturePredictor":
        # Built as evaluation builds it (device, channels_last); never compiled, never downloading weights.
        config = TrainConfig.from_dict({**checkpoint["config"], "device": "auto", "weights": "none", "compile": "off"})
        state = build_training(config, device or select_device())
        state.model.load_state_dict(checkpoint["model"])
        state.model.eval()
        return cls(state, OperatingPoint.of(checkpoint), source)

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, device: torch.device | None = None) -> "FracturePredictor":
        path = Path(path)
        if not path.is_file():
            raise UserError(
                f"Model not found: {path}. Give a checkpoint file (checkpoint.pt of a trial or of fracture_models.train) "
                "or a model URI such as models:/fracture-cnn@champion."
            )
        try:
            checkpoint = load_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a file that is not a checkpoint
            raise UserError(f"{path} is not a checkpoint of this project ({type(exc).__name__}: {exc}).") from exc
        if not isinstance(checkpoint, dict) or not {"model", "config"} <= set(checkpoint):
            raise UserError(f"{path} is not a checkpoint of this project: it has no 'model' weights and 'config'.")
        return cls.from_checkpoint(checkpoint, source=str(path), device=device)

    @property
    def arch(self) -> str:
        return self.state.config.arch

    @property
    def image_size(self) -> int:
        return self.state.config.image_size

    def decode(self, image: str | os.PathLike | bytes) -> np.ndarray:
        """A path or the bytes of a file, decoded and resized as training does; `ValueError` says why not."""
        if not isinstance(image, (bytes, bytearray, memoryview)):
            return decode_file(Path(image), self.image_size)
        if not image:
            raise ValueError("empty file (0 bytes)")
        try:
            return decode_image(bytes(image), self.image_size)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged files
            raise ValueError(f"does not decode: {type(exc).__name__}: {exc}") from exc

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Fracture probabilities of decoded images, through evaluation's own loader and loop."""
        split = DecodedSplit("predict", stack_images(images), torch.zeros(len(images), dtype=torch.int64), [""] * len(images))
        loader = BatchLoader(split, self.batch_size, device=self.state.device, channels_last=self.state.channels_last)
        return predict(self.state, loader)[1]

    def verdict(self, probability: float) -> dict:
        if not math.isfinite(probability):  # never a silent "not fractured", never NaN in the JSON
            return {"error": f"the model's output is not a number ({probability}); its weights may have diverged"}
        return {
            "fracture_probability": float(probability),
            "decision": self.operating_point.decide(probability),
            "threshold": self.operating_point.threshold,
        }

    def predict(self, images: Iterable[str | os.PathLike | bytes]) -> Iterator[dict]:
        """For each image (a path or its bytes), in order: its verdict, or `{"error": why}`."""
        for result, _ in self.predict_with_pixels(images):
            yield result

    def predict_with_pixels(self, images: Iterable) -> Iterator[tuple[dict, np.ndarray | None]]:
        """`predict`'s results, each with the decoded image (None where it failed), a batch at a time."""
        images = iter(images)
        while chunk := list(islice(images, self.batch_size)):
            decoded: list[np.ndarray | str] = []
            for image in chunk:
                try:
                    decoded.append(self.decode(image))
                except (ValueError, OSError) as exc:
                    decoded.append(str(exc))
            good = [d for d in decoded if not isinstance(d, str)]
            probabilities = iter(self.probabilities(good) if good else [])
            for d in decoded:
                yield ({"error": d}, None) if isinstance(d, str) else (self.verdict(next(probabilities)), d)

    def gradcam_overlay(self, image: np.ndarray, verdict: Mapping, path: Path, title: str) -> Path | None:
        """The image with the Grad-CAM heatmap of its decided class laid over it, as a PNG."""
        from fracture_models.augment import to_model_input
        from fracture_models.explain import gradcam
        from fracture_models.plots import plot_heatmap_grid

        pixels = stack_images([image])
        inputs = to_model_input(pixels.to(self.state.device))
        if self.state.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        heat = gradcam(self.state.model, self.arch, inputs, CLASS_NAMES.index(verdict["decision"]))[0]
        caption = (
            f"p(fractured) {verdict['fracture_probability']:.3f}, threshold {verdict['threshold']:.3g}\nmap for '{verdict['decision']}'"
        )
        panel = {"image": pixels[0].float().mean(0).numpy() / 255.0, "heatmap": heat.numpy(), "caption": caption}
        return plot_heatmap_grid([panel], path, title=title)


# ---------------------------------------------------------------------------------------------
# Where a model comes from


def load_predictor(model: str, *, device: torch.device | None = None) -> FracturePredictor:
    """A checkpoint file, or a model URI handed to the loader registered for its scheme."""
    match = _URI.match(model)
    if match is None or Path(model).exists():
        return FracturePredictor.from_file(model, device=device)
    return _uri_loader(match.group(1))(model, device=device)


def _uri_loader(scheme: str) -> Callable[..., FracturePredictor]:
    from importlib.metadata import entry_points

    loaders = {point.name: point for point in entry_points(group=MODEL_SOURCES)}
    if scheme not in loaders:
        raise UserError(
            f"No loader for {scheme}:/ model URIs (known: {', '.join(sorted(loaders)) or 'none'}). MLflow URIs (models:/, runs:/) "
            "are loaded by fracture-tune's tuning package: install the project (pip install -e .) so its entry points are registered, "
            "or give a checkpoint file."
        )
    return loaders[scheme].load()


# ---------------------------------------------------------------------------------------------
# The command line


def image_files(inputs: Iterable[Path]) -> Iterator[tuple[Path, str | None]]:
    """(path, None) for each named file and each image file under each named folder, in order;
    (folder, why) for a folder without images."""
    for path in inputs:
        if not path.is_dir():
            yield path, None
            continue
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not found:
            yield path, f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder"
        yield from ((p, None) for p in found)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fracture_models.predict",
        description="Fracture probability and decision for X-ray images, one JSON line per image, preprocessed as in training.",
        add_help=add_help,
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a checkpoint file (checkpoint.pt of a trial or of fracture_models.train) or an MLflow model URI: "
        "models:/fracture-vgg16@champion, models:/<logged model id>, runs:/<run id>/model",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER", help="image files, or folders searched recursively")
    parser.add_argument(
        "--gradcam", type=Path, default=None, metavar="DIR", help="also write each image's Grad-CAM overlay (of its decision) to DIR"
    )
    return parser


def _overlay_path(folder: Path, image: Path, used: set[str]) -> Path:
    name = f"{image.stem}.gradcam.png"
    count = 1
    while name in used:  # two images of one name in different folders
        count += 1
        name = f"{image.stem}-{count}.gradcam.png"
    used.add(name)
    return folder / name


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    predictor = load_predictor(args.model)
    if args.gradcam is not None:
        args.gradcam.mkdir(parents=True, exist_ok=True)
    failed, used = 0, set()
    listed = list(image_files(args.images))
    verdicts = predictor.predict_with_pixels(path for path, why in listed if why is None)
    for path, why in listed:
        result, pixels = ({"error": why}, None) if why is not None else next(verdicts)
        line = {"path": str(path), **result}
        if pixels is not None and args.gradcam is not None:
            overlay = _overlay_path(args.gradcam, path, used)
            if predictor.gradcam_overlay(pixels, result, overlay, title=f"{predictor.arch}: {path.name}") is not None:
                line["gradcam"] = str(overlay)
        failed += "error" in line
        print(json.dumps(line), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    from fracture_models.cli import run_main

    sys.exit(run_main(main))
