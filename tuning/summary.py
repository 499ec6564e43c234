"""The end of a search: rank trials on validation, write and print its summary (the winner's one
test evaluation is `fracture_models.evaluate`)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from fracture_models.evaluate import format_clinical
from fracture_models.metrics import best_epoch, predicts_one_class, run_state, selection_score
from fracture_models.plots import plot_confusion_matrix, plot_learning_curves
from fracture_models.records import write_json
from fracture_models.study import STUDY_TEST_RESULTS
from tuning.trainable import CHECKPOINT_SCORE

SUMMARY_FILE = "summary.json"
CONFIRMATION_FILE = "confirmation.csv"
GENERATED_DATA_LABEL = "generated data"
CURVES_FILE = "learning_curves.png"
TEST_CONFUSION_FILE = "test_confusion_matrix.png"
TRIALS_FILE = "trials.csv"
MIN_TRIALS_FOR_IMPORTANCES = 5

logger = logging.getLogger("tuning.summary")


def _better(mode: str):
    return max if mode == "max" else min


def trial_id_of(result) -> str:
    return (result.metrics or {}).get("trial_id") or Path(result.path).name


def trial_rows(
    results: Iterable,
    hyperparameters: Iterable[str],
    metric: str,
    mode: str,
    max_epochs: int,
    tie_order: Mapping[str, int] | None = None,
) -> list[dict]:
    """One row per trial, best first: its hyperparameters, best validation value and epoch, how it ended.

    A trial's best epoch is the one with the best checkpoint score (the metric, demoted where the
    model answered one class for every image), the same rule that chose which checkpoints to keep.
    Equal scores keep `tie_order` (trial id -> Optuna trial number: the earlier trial first).
    """
    names = list(hyperparameters)
    rows = []
    for result in results:
        history: pd.DataFrame | None = result.metrics_dataframe
        records = history.to_dict("records") if history is not None and metric in history else []
        best = best_epoch(records, metric, mode)
        if best is not None:
            best_score, best_value = selection_score(best, metric, mode, prefix="val_"), float(best[metric])
            best_at, one_class = int(best["training_iteration"]), predicts_one_class(best, prefix="val_")
            epochs = int(max(r["training_iteration"] for r in records))
        else:
            best_score = best_value = math.nan
            best_at, epochs, one_class = 0, 0, False
        status = run_state(epochs, max_epochs, failed=bool(result.error))
        rows.append(
            {
                "trial_id": trial_id_of(result),
                **{name: result.config.get(name) for name in names},
                "best_value": best_value,
                "best_epoch": best_at,
                "predicts_one_class": one_class,
                "epochs": epochs,
                "status": status,
                "seconds": float((result.metrics or {}).get("time_total_s") or 0.0),
                "path": result.path,
                CHECKPOINT_SCORE: best_score,
            }
        )
    scored = [r for r in rows if not math.isnan(r[CHECKPOINT_SCORE])]
    unscored = [r for r in rows if math.isnan(r[CHECKPOINT_SCORE])]
    order = tie_order or {}
    sign = -1 if mode == "max" else 1
    scored.sort(key=lambda r: (sign * r[CHECKPOINT_SCORE], order.get(r["trial_id"], len(order))))
    return scored + unscored


def best_single_run(rows: list[dict]) -> dict:
    """The best trial that ran the whole budget, as Optuna sees it: an early-stopped trial is
    PRUNED there, a partial run. Falls back to the best row when no trial completed."""
    return next((r for r in rows if r["status"] == "completed"), rows[0])


def best_checkpoint_dir(result, mode: str) -> Path:
    """A local folder holding the trial's kept checkpoint with the best checkpoint score."""
    return scored_checkpoint_dir(result.best_checkpoints, mode, result.path)


def scored_checkpoint_dir(checkpoints: Iterable[tuple], mode: str, trial_path: str) -> Path:
    """A local folder holding the best-scored of a trial's kept (checkpoint, metrics) pairs."""
    candidates = [(c, m) for c, m in checkpoints if CHECKPOINT_SCORE in m]
    if not candidates:
        raise RuntimeError(f"trial {trial_path} kept no scored checkpoint")
    checkpoint, _ = _better(mode)(candidates, key=lambda cm: cm[1][CHECKPOINT_SCORE])
    from pyarrow.fs import LocalFileSystem

    from tuning.trust import base_filesystem

    if isinstance(base_filesystem(checkpoint.filesystem), LocalFileSystem):  # under the filesystem that signs the job's state
        return Path(checkpoint.path)
    return Path(checkpoint.to_directory())  # remote storage (s3://...): a local copy for the test pass


def is_baseline(row: Mapping, baseline: Mapping) -> bool:
    return all(row.get(k) is not None and math.isclose(float(row[k]), float(v)) for k, v in baseline.items())


def _lost_with_driver_lines(lost: list[dict]) -> list[str]:
    """What became of the trials a killed driver left unsaved (a summary written before
    `ran_again_as` existed ran every one again)."""
    again = sum(t.get("ran_again_as", -1) is not None for t in lost)
    lines = []
    if again:
        lines.append(
            f"{again} trial(s) started just before the driver died and could not resume; each ran again "
            "from the start with the same configuration (recorded as FAIL in Optuna, KILLED in MLflow)."
        )
    if len(lost) > again:
        lines.append(
            f"{len(lost) - again} trial(s) died while Optuna drew their configuration, before any training; "
            "fresh trials were drawn in their place (recorded as FAIL in Optuna)."
        )
    return lines


def format_summary(summary: dict, top: int = 5) -> str:
    """Human-readable end-of-search report."""
    metric, names = summary["metric"], list(summary["baseline"])
    lines = [
        f"Search {summary['experiment']} ({summary['arch']}): {summary['num_trials']} trials, "
        f"{summary['trials_stopped_early']} stopped early, {summary['trials_failed']} failed; "
        f"{summary['epochs_trained']} of {summary['epochs_budget']} epochs trained.",
        "",
        f"Top trials by {metric} (validation):",
        "  " + "  ".join(f"{h:>12}" for h in ["trial", *names, "best", "epoch", "status"]),
    ]
    for row in summary["trials"][:top]:
        values = [
            row["trial_id"][-12:],
            *[f"{row[n]:.4g}" for n in names],
            f"{row['best_value']:.4f}",
            str(row["best_epoch"]),
            row["status"],
        ]
        lines.append("  " + "  ".join(f"{v:>12}" for v in values))
    best, base = summary.get("tested_trial") or summary["best_trial"], summary.get("baseline_trial")
    lines += ["", f"{'':>14}{'winner':>12}{'baseline':>12}"]
    for n in names:
        lines.append(f"{n:>14}{best[n]:>12.4g}{summary['baseline'][n]:>12.4g}")
    if base:
        lines.append(f"{metric:>14}{best['best_value']:>12.4f}{base['best_value']:>12.4f}")
    if summary.get("confirmation"):
        from tuning.confirmation import format_confirmation

        lines += ["", *format_confirmation(summary["confirmation"])]
    if summary.get("trials_lost_with_driver"):
        lines += ["", *_lost_with_driver_lines(summary["trials_lost_with_driver"])]
    if best.get("predicts_one_class"):
        lines += [
            "",
            "Warning: every trial's model gave all validation images one answer; none tells the classes apart. Train longer (--epochs).",
        ]
    test, study = summary["test"], summary.get("study_reported") or {}
    lines += ["", f"Winner on test (once, {test['num_images']} images, positive class '{test['positive_class']}'):"]
    if summary.get("generated_data"):
        lines.append(f"  {GENERATED_DATA_LABEL}: not comparable with the study's numbers, which are on the real X-rays.")
    lines.append(f"{'':>24}{'winner':>10}{'study':>10}")
    for key, label in [
        ("accuracy", "accuracy"),
        ("fracture_sensitivity", "fracture sensitivity"),
        ("fracture_specificity", "fracture specificity"),
        ("fracture_f1", "fracture F1"),
        ("roc_auc", "ROC AUC"),
    ]:
        reference = study.get(key)
        lines.append(f"{label:>24}{test[key]:>10.4f}{(f'{reference:.4f}' if reference is not None else '-'):>10}")
    if summary.get("clinical"):
        lines += ["", *format_clinical(summary["clinical"])]
    return "\n".join(lines)


def study_reference(arch: str) -> dict:
    return dict(STUDY_TEST_RESULTS.get(arch, {}))


def write_report(folder: Path, summary: dict, results: Iterable, study) -> list[Path]:
    """summary.json, a table of trials, every trial's validation curve, the winner's test
    confusion matrix and Optuna's plots; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [write_json(folder / SUMMARY_FILE, summary)]
    table = pd.DataFrame(summary["trials"]).drop(columns=["path"])
    table.to_csv(folder / TRIALS_FILE, index=False)
    files.append(folder / TRIALS_FILE)
    if summary.get("confirmation"):
        files.append(write_confirmation_table(summary["confirmation"], folder / CONFIRMATION_FILE))
    metric, curves = summary["metric"], {}
    for result in results:
        history = result.metrics_dataframe
        if history is not None and metric in history:
            curves[trial_id_of(result)] = (history["training_iteration"].tolist(), history[metric].tolist())
    title = f"{summary['experiment']}: {len(curves)} trials (x = stopped early)"
    files.append(
        plot_learning_curves(
            curves, folder / CURVES_FILE, metric=metric, highlight=summary["test_evaluated_for"], title=title, mode=summary["mode"]
        )
    )
    files.append(
        plot_confusion_matrix(summary["test"]["confusion_matrix"], folder / TEST_CONFUSION_FILE, title=f"{summary['arch']}: winner on test")
    )
    files += optuna_plots(study, folder)
    return [f for f in files if f is not None]  # a plot that could not be written is only a warning


def write_confirmation_table(confirmation: Mapping, path: Path) -> Path:
    """One row per run of each confirmed configuration, with the configuration's mean and sd."""
    rows = [
        {
            "configuration": c["trial_id"],
            "is_baseline": c["is_baseline"],
            "winner": c["trial_id"] == confirmation["winner"],
            **c["hyperparameters"],
            "seed": r["seed"],
            "run": r["trial_id"],
            "search_run": r["search_run"],
            confirmation["metric"]: r["value"],
            "mean": c["mean"],
            "sd": c["sd"],
            "runs": c["n"],
        }
        for c in confirmation["configurations"]
        for r in c["runs"]
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _readable_lines(axes) -> None:
    """Optuna colours parallel-coordinate lines with "Blues", whose light end is nearly white on
    its grey background: keep the darker part, so the worst trial's line stays visible."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap

    for lines in axes.collections:
        if isinstance(lines, LineCollection) and lines.get_array() is not None:
            cmap = lines.get_cmap()
            span = (0.0, 0.55) if cmap.name.endswith("_r") else (0.45, 1.0)
            lines.set_cmap(ListedColormap(cmap(np.linspace(*span, cmap.N)), name=f"{cmap.name}_readable"))
            if lines.colorbar is not None:
                lines.colorbar.update_normal(lines)


def optuna_plots(study, folder: Path) -> list[Path]:
    """Optimisation history, parameter importances and parallel coordinates, as PNGs."""
    import warnings

    import matplotlib.pyplot as plt  # optuna's plots draw through pyplot; each figure is closed once saved
    from optuna.visualization import matplotlib as optuna_plt

    plots = {
        "optuna_history.png": optuna_plt.plot_optimization_history,
        "optuna_importances.png": optuna_plt.plot_param_importances,
        "optuna_parallel_coordinates.png": optuna_plt.plot_parallel_coordinate,
    }
    complete = sum(t.state.name == "COMPLETE" for t in study.trials)
    if complete < MIN_TRIALS_FOR_IMPORTANCES:
        # fANOVA on a handful of full-length trials (early-stopped ones carry no value) says "all equal".
        del plots["optuna_importances.png"]
        logger.info("Parameter importances skipped: %d complete trials (< %d)", complete, MIN_TRIALS_FOR_IMPORTANCES)
    written = []
    for name, draw in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna's matplotlib backend is marked experimental
                axes = draw(study)
            if name == "optuna_parallel_coordinates.png":
                _readable_lines(axes)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(folder / name, dpi=110)
            plt.close(figure)
            written.append(folder / name)
        except OSError as exc:  # disk full: the job goes on without this plot
            plt.close("all")
            logger.warning("Could not write Optuna's plot %s (%s); the job goes on without it.", name, exc)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances need 2+ complete trials
            logger.info("Optuna plot %s skipped: %s", name, exc)
    return written


def where_to_look(experiment: str, optuna_url: str, local: bool) -> str:
    lines = [f"Results in {experiment}/"]
    if local:
        lines += [
            f"  {SUMMARY_FILE:<26}every trial, the winner's config, its test metrics beside the study's",
            f"  {CURVES_FILE:<26}validation curves of all trials",
            f"  {TEST_CONFUSION_FILE:<26}the winner on the test split",
            f"  {'test_roc_curve.png':<26}ROC with the AUC interval and the operating point; test_reliability.png, test_gradcam.png",
            f"  {'audit/':<26}duplicates across splits, shortcut attributes, bad files (python -m fracture_models.audit)",
            f"  {TRIALS_FILE:<26}one row per trial; optuna_*.png: Optuna's plots of the study",
            f"  {'trial_<id>/':<26}each trial's per-epoch metrics (progress.csv) and best checkpoints",
        ]
    lines.append(f"Browse the Optuna study: pip install optuna-dashboard && optuna-dashboard {optuna_url}")
    return "\n".join(lines)
