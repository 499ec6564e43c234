"""A single training run of the study's recipe.

    python -m fracture_models.train --arch cnn --data-dir DIR [--epochs 10 --lr 1e-3 ...] [--out DIR]

Trains on train, evaluates validation after every epoch, keeps the checkpoint with the best
validation fracture F1, and evaluates that checkpoint once on test with the clinical report a
search's winner gets (fracture_models.evaluate). Writes to --out: metrics.json (test metrics and
the clinical report), config.json, checkpoint.pt, confusion_matrix.png, loss_curves.png,
test_roc_curve.png, test_reliability.png, test_gradcam.png and excluded_files.csv. checkpoint.pt carries
the operating threshold chosen on validation, at which `python -m fracture_models.predict` decides.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import time
from pathlib import Path

from fracture_models.cli import (
    configure_logging,
    get_common_parser,
    get_hyperparameter_parser,
    resolve_data_dir,
    run_main,
)
from fracture_models.config import TrainConfig
from fracture_models.data import ExcludedFile, load_dataset, resolve_dataset_root
from fracture_models.engine import build_training, fit, load_checkpoint, make_checkpoint, make_loaders, save_checkpoint, select_device
from fracture_models.evaluate import evaluate_checkpoint, format_clinical
from fracture_models.metrics import DEFAULT_SELECTION_METRIC, predicts_one_class, scalar_metrics, selection_score
from fracture_models.plots import plot_confusion_matrix, plot_loss_curves
from fracture_models.predict import OperatingPoint
from fracture_models.records import write_json

logger = logging.getLogger("fracture_models.train")

SELECTION_METRIC = DEFAULT_SELECTION_METRIC


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fracture_models.train",
        description="Train one model with the study's recipe; select on validation, test once.",
        parents=[get_common_parser(), get_hyperparameter_parser()],
        add_help=add_help,
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/train/<arch>-<time>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        arch=args.arch,
        epochs=args.epochs,
        lr=args.lr,
        step_size=args.step_size,
        gamma=args.gamma,
        aug_strength=args.aug_strength,
        batch_size=args.batch_size,
        image_size=args.image_size,
        weights=args.weights,
        seed=args.seed,
        device=args.device,
    )


def write_excluded(excluded: list[ExcludedFile], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "reason"])
        writer.writerows([bad.path, bad.reason] for bad in excluded)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    config = config_from_args(args)
    out: Path = args.out or Path("runs") / "train" / f"{config.arch}-{time.strftime('%Y%m%d-%H%M%S')}"

    device = select_device(config.device)
    state = build_training(config, device)  # missing weights fail before data is generated or decoded
    data_dir = resolve_dataset_root(resolve_data_dir(args))
    dataset = load_dataset(
        data_dir,
        config.image_size,
        cache_dir=args.cache_dir,
        max_bad_fraction=args.max_bad_fraction,
        progress=not args.quiet,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"config": config.to_dict(), "dataset": dataset.summary()})
    write_excluded(dataset.excluded, out / "excluded_files.csv")
    logger.info(
        "Training %s on %s (%s) for %d epochs on %s; %d files excluded (listed in %s)",
        config.arch,
        dataset.root,
        ", ".join(f"{k} {len(v)}" for k, v in dataset.splits.items()),
        config.epochs,
        device,
        len(dataset.excluded),
        out / "excluded_files.csv",
    )

    train_loader, val_loader = make_loaders(state, dataset.train, dataset.val)
    best = {"score": -math.inf, "value": math.nan, "epoch": 0, "val": None}
    checkpoint_path = out / "checkpoint.pt"

    def keep_best(row: dict, val: dict, state) -> None:
        score = selection_score(row, SELECTION_METRIC, "max", prefix="val_")
        if score > best["score"]:
            best.update(score=score, value=row[SELECTION_METRIC], epoch=row["epoch"], val=val)
            save_checkpoint(make_checkpoint(state, scalar_metrics(val)), checkpoint_path)

    history = fit(state, train_loader, val_loader, on_epoch_end=keep_best, progress=not args.quiet)
    if predicts_one_class(best["val"]):
        logger.warning(
            "At every epoch the model gave all validation images the same answer; it has not learned to tell "
            "the classes apart. Train longer (--epochs), or check the learning rate and the data."
        )

    # The test split is evaluated exactly once, for the checkpoint selected on validation, with the
    # same clinical report as a search's winner.
    test, clinical, _ = evaluate_checkpoint(
        checkpoint_path, dataset.val, dataset.test, config.batch_size, out, seed=config.seed, device=device
    )
    # The checkpoint carries the threshold chosen on validation: fracture_models.predict decides at it.
    operating_point = OperatingPoint.from_clinical(clinical).to_dict()
    save_checkpoint({**load_checkpoint(checkpoint_path), "operating_point": operating_point}, checkpoint_path)

    plot_confusion_matrix(test["confusion_matrix"], out / "confusion_matrix.png", title=f"{config.arch}: test (epoch {best['epoch']})")
    plot_loss_curves(history, out / "loss_curves.png", title=f"{config.arch}: loss")
    metrics = {
        "config": config.to_dict(),
        "dataset": dataset.summary(),
        "selection_metric": SELECTION_METRIC,
        "best_epoch": best["epoch"],
        "history": history,
        "best_val": best["val"],
        "test": test,
        "clinical": clinical,
    }
    write_json(out / "metrics.json", metrics)
    print(
        f"Best epoch {best['epoch']} (val fracture F1 {best['value']:.4f}). Test: accuracy {test['accuracy']:.4f}, "
        f"fracture sensitivity {test['fracture_sensitivity']:.4f}, specificity {test['fracture_specificity']:.4f}, "
        f"F1 {test['fracture_f1']:.4f}, ROC AUC {test['roc_auc']:.4f}.\n" + "\n".join(format_clinical(clinical)) + f"\nResults in {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
