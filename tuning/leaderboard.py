"""Team leaderboards: rank the searches in the tracking store, beside the study's reported numbers.

    python -m tuning.leaderboard [--arch vgg16] [--team imaging] [--by team] [--format markdown]

Rules that keep the board fair:
- ranking uses each job's best *validation* value of one metric (default val_fracture_f1);
  test metrics are shown, never ranked on unless asked (--metric test_accuracy), and exist only
  for each job's selected winner (tested once);
- jobs on different data (fingerprint) or image sizes are in separate groups, never ranked
  against each other;
- the study's reported test results are reference rows, marked as such, never ranked.
"""

from __future__ import annotations

import argparse
import html
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

import pandas as pd

from fracture_models.errors import UserError
from fracture_models.metrics import CATALOGUE, DEFAULT_SELECTION_METRIC, metric_mode
from fracture_models.models import resolve_weights
from fracture_models.study import STUDY_TEST_RESULTS
from tuning.tracking.names import (
    DATA_FILES_TAG,
    EXPERIMENT_PREFIX,
    GENERATED_DATA_TAG,
    GPU_HOURS_METRIC,
    ROLE_TAG,
    SEARCH_ROLE,
    STOPPED_EARLY_METRIC,
    TRIAL_HOURS_METRIC,
    TRIALS_METRIC,
    best_metric_name,
    confirm_metric_name,
)
from tuning.tracking.ui import runs_table_url

TEST_COLUMNS = ("test_accuracy", "test_fracture_sensitivity", "test_fracture_specificity", "test_fracture_f1")


@dataclass
class Job:
    """One finished search, as its MLflow parent run records it."""

    team: str
    user: str
    arch: str
    job: str
    metric: str
    value: float | None
    test: dict[str, float]
    trials: int
    stopped_early: int
    trial_hours: float
    gpu_hours: float
    date: str
    link: str
    data_fingerprint: str
    image_size: str
    confirmed: str = "-"  # the winner's mean +- sd over training seeds (its confirmation), where it has one
    generated_data: bool = False
    files: int | None = None  # image files in the data's three splits (jobs before 2026-11-28 did not record it)
    rank: int | None = None


@dataclass
class Group:
    """Jobs comparable with each other: same data and image size."""

    data_fingerprint: str
    image_size: str
    jobs: list[Job] = field(default_factory=list)

    @property
    def generated_data(self) -> bool:
        return any(job.generated_data for job in self.jobs)

    @property
    def files(self) -> int | None:
        return next((job.files for job in self.jobs if job.files is not None), None)

    def name(self) -> str:
        """A name a reader recognises: generated or real, image size, number of images, and the
        data fingerprint that tells two sets of the same size apart."""
        size = f", {self.files:,} images" if self.files is not None else ""
        return f"{'Generated' if self.generated_data else 'Real'} data, {self.image_size} px{size} ({self.data_fingerprint[:12]})"


def ui_base(tracking_uri: str) -> str | None:
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else None


def collect_jobs(
    client,
    tracking_uri: str,
    metric: str,
    *,
    arch: str | None = None,
    team: str | None = None,
    readable: Callable[[list[str]], list[str]] | None = None,
) -> list[Job]:
    """Finished searches (parent runs tagged role=search) in the fracture-* experiments; `readable`
    keeps the experiment ids a reader may see, where the client itself does not enforce that."""
    experiments = [e for e in client.search_experiments(max_results=1000) if e.name.startswith(EXPERIMENT_PREFIX)]
    if arch:
        experiments = [e for e in experiments if e.name == f"{EXPERIMENT_PREFIX}{arch}"]
    if readable is not None:
        allowed = set(readable([e.experiment_id for e in experiments]))
        experiments = [e for e in experiments if e.experiment_id in allowed]
    if not experiments:
        return []
    query = f"tags.{ROLE_TAG} = '{SEARCH_ROLE}' and attributes.status = 'FINISHED'"  # constants only: no user text in a filter
    base, jobs = ui_base(tracking_uri), []
    for run in _all_runs(client, [e.experiment_id for e in experiments], query):
        tags, metrics = run.data.tags, run.data.metrics
        if team and tags.get("team") != team:
            continue
        value = metrics.get(metric if metric.startswith("test_") else best_metric_name(metric))
        jobs.append(
            Job(
                team=tags.get("team", "?"),
                user=tags.get("user", "?"),
                arch=tags.get("arch", "?"),
                job=run.info.run_name,
                metric=tags.get("metric", "?"),
                value=value,
                test={k: metrics[k] for k in TEST_COLUMNS if k in metrics},
                trials=int(metrics.get(TRIALS_METRIC, 0)),
                stopped_early=int(metrics.get(STOPPED_EARLY_METRIC, 0)),
                trial_hours=float(metrics.get(TRIAL_HOURS_METRIC, 0.0)),
                gpu_hours=float(metrics.get(GPU_HOURS_METRIC, 0.0)),
                date=datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M"),
                link=runs_table_url(base, run.info.experiment_id) if base else run.info.run_id,  # the job's row there opens into its trials
                data_fingerprint=tags.get("data_fingerprint", "?"),
                image_size=tags.get("image_size", "?"),
                confirmed=_confirmed(metrics) if not metric.startswith("test_") else "-",
                generated_data=tags.get(GENERATED_DATA_TAG) == "true",
                files=int(tags[DATA_FILES_TAG]) if tags.get(DATA_FILES_TAG, "").isdigit() else None,
            )
        )
    return jobs


def _confirmed(metrics: dict) -> str:
    """'mean +- sd (n seeds)' of the job's confirmed winner, from its parent run's confirm_* metrics."""
    mean, sd, runs = (confirm_metric_name("winner", stat) for stat in ("mean", "sd", "runs"))
    if mean not in metrics:
        return "-"
    seeds = int(metrics.get(runs, 1))
    spread = f" ± {metrics[sd]:.4f}" if sd in metrics else ""
    return f"{metrics[mean]:.4f}{spread} ({seeds} seed{'s' if seeds != 1 else ''})"


def _all_runs(client, experiment_ids: list[str], query: str) -> Iterable:
    token = None
    while True:
        page = client.search_runs(experiment_ids, query, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def rank(jobs: Iterable[Job], metric: str, *, by: str | None = None, top: int | None = None) -> list[Group]:
    """Groups of comparable jobs, each ranked best first; with `by`, only the best job per team/user/arch."""
    descending = metric_mode(metric) == "max"
    groups: dict[tuple[str, str], Group] = {}
    for job in jobs:
        if job.value is None:
            continue  # the job did not record this metric (it optimised another one)
        key = (job.data_fingerprint, job.image_size)
        groups.setdefault(key, Group(*key)).jobs.append(job)
    out = []
    for group in groups.values():
        ordered = sorted(group.jobs, key=lambda j: j.value, reverse=descending)
        if by:
            seen, kept = set(), []
            for job in ordered:
                if getattr(job, by) not in seen:
                    seen.add(getattr(job, by))
                    kept.append(job)
            ordered = kept
        ordered = ordered[:top] if top else ordered
        for position, job in enumerate(ordered, start=1):
            job.rank = position
        group.jobs = ordered
        out.append(group)
    return sorted(out, key=lambda g: -len(g.jobs))


def study_rows(arch: str | None) -> list[dict]:
    """The study's reported test results (CNN 0.8913, ResNet50 0.9368, VGG16 0.9763 accuracy)."""
    rows = []
    for name, reported in STUDY_TEST_RESULTS.items():
        if arch and name != arch:
            continue
        rows.append(
            {
                "arch": name,
                "test_accuracy": reported["accuracy"],
                "test_fracture_sensitivity": reported["fracture_sensitivity"],
                "test_fracture_specificity": reported["fracture_specificity"],
                "test_fracture_f1": reported["fracture_f1"],
                "reported_precision": reported["reported_precision"],
                "reported_recall": reported["reported_recall"],
                "reported_f1": reported["reported_f1"],
            }
        )
    return rows


HEADERS = (
    "rank",
    "team",
    "user",
    "arch",
    "job",
    "best",
    "confirmed",
    "test acc",
    "sens",
    "spec",
    "F1",
    "trials",
    "stopped",
    "trial-h",
    "GPU-h",
    "date",
    "link",
)


def _cells(job: Job) -> dict[str, str]:
    """A job's row as text, by column name."""
    test = {
        header: f"{job.test[key]:.4f}" if key in job.test else "-" for header, key in zip(("test acc", "sens", "spec", "F1"), TEST_COLUMNS)
    }
    return {
        "rank": str(job.rank),
        "team": job.team,
        "user": job.user,
        "arch": job.arch,
        "job": job.job,
        "best": f"{job.value:.4f}",
        "confirmed": job.confirmed,
        **test,
        "trials": str(job.trials),
        "stopped": str(job.stopped_early),
        "trial-h": f"{job.trial_hours:.2f}",
        "GPU-h": f"{job.gpu_hours:.2f}",
        "date": job.date,
        "link": job.link,
    }


def _study_cells(row: dict) -> dict[str, str]:
    """A reference row of the study's reported results; columns it has no value for read "-"."""
    test = {header: f"{row[key]:.4f}" for header, key in zip(("test acc", "sens", "spec", "F1"), TEST_COLUMNS)}
    reported = f"the study: precision {row['reported_precision']:.4f}, recall {row['reported_recall']:.4f}, F1 {row['reported_f1']:.4f}"
    return {**dict.fromkeys(HEADERS, "-"), "rank": "study", "team": "(reported)", "arch": row["arch"], "job": reported, **test}


def _table(rows: list[dict[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(HEADERS), dtype=str)


def _caption(group: Group, metric: str) -> str:
    return f"{group.name()}: ranked by {metric}"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(cell: str) -> str:
    """A cell a spreadsheet shows as text: one that starts like a formula gets a leading quote
    (OWASP's advice against CSV injection); numbers and the "-" placeholder stay as they are."""
    if cell.startswith(_FORMULA_START) and cell != "-":
        try:
            float(cell)
            return cell
        except ValueError:
            return "'" + cell
    return cell


def _markdown_cell(cell: str) -> str:
    """A cell that renders as the text it holds: HTML escaped, pipes kept inside the cell."""
    return html.escape(cell, quote=False).replace("|", "\\|")


def render(groups: list[Group], study: list[dict], metric: str, fmt: str, empty_hint: str) -> str:
    if fmt == "csv":
        frames = [
            _table([_cells(job) for job in group.jobs]).assign(
                group_data_fingerprint=group.data_fingerprint,
                group_image_size=group.image_size,
                group_generated_data=str(group.generated_data).lower(),
            )
            for group in groups
        ]
        frames.append(
            _table([_study_cells(r) for r in study]).assign(group_data_fingerprint="", group_image_size="", group_generated_data="")
        )
        table = pd.concat(frames, ignore_index=True)
        table = table[["group_data_fingerprint", "group_image_size", "group_generated_data", *HEADERS]]
        return table.map(_csv_cell).to_csv(index=False, lineterminator="\r\n")
    if fmt == "html":
        return render_html(groups, study, metric, empty_hint)
    blocks = [] if groups else [empty_hint]
    tables = [(_caption(g, metric), _table([_cells(job) for job in g.jobs])) for g in groups]
    tables.append(("The study's reported test results (reference, not ranked)", _table([_study_cells(r) for r in study])))
    for caption, table in tables:
        blocks.append(_markdown_table(caption, table) if fmt == "markdown" else f"{caption}\n{_text(table)}")
    return "\n\n".join(blocks) + "\n"


def _text(table: pd.DataFrame) -> str:
    """Left-aligned columns for a terminal."""
    if table.empty:
        return "  ".join(HEADERS)
    return table.to_string(
        index=False, justify="left", formatters={c: f"{{:<{max(len(c), table[c].str.len().max())}}}".format for c in table}
    )


def _markdown_table(caption: str, table: pd.DataFrame) -> str:
    lines = [f"**{caption}**", "", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def render_html(
    groups: list[Group], study: list[dict], metric: str, empty_hint: str, *, form: dict | None = None, plot: str | None = None
) -> str:
    """A self-contained page (no scripts, no external assets) from `templates/leaderboard.html`,
    every value escaped by Jinja2; `form` adds the filter form, `plot` a base64 PNG."""
    return (
        _templates()
        .get_template("leaderboard.html")
        .render(
            headers=HEADERS,
            groups=[
                {"caption": _caption(g, metric), "generated": g.generated_data, "rows": [list(_cells(j).values()) for j in g.jobs]}
                for g in groups
            ],
            study=[list(_study_cells(r).values()) for r in study],
            empty_hint=empty_hint,
            form=form,
            plot=plot,
        )
    )


def _templates():
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("tuning", "templates"), autoescape=select_autoescape(["html"]))


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuning.leaderboard", description="Rank the team's searches from the MLflow tracking store.", add_help=add_help
    )
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else the local store")
    parser.add_argument("--arch", default=None, help="only this architecture")
    parser.add_argument("--team", default=None, help="only this team")
    parser.add_argument("--by", choices=["team", "user", "arch"], default=None, help="keep the best job per team, user or architecture")
    parser.add_argument(
        "--metric",
        default=DEFAULT_SELECTION_METRIC,
        help="rank on this validation metric (default: %(default)s); test_* ranks on test; any of "
        + ", ".join(f"val_{name}" for name in CATALOGUE),
    )
    parser.add_argument("--top", type=int, default=None, help="rows per group")
    parser.add_argument("--format", choices=["table", "markdown", "csv", "html"], default="table")
    parser.add_argument("--out", default=None, help="write to this file instead of the terminal")
    return parser


def check_metric(metric: str) -> None:
    """Reject a metric the searches never record, instead of answering "no searches yet"."""
    try:
        metric_mode(metric)
    except KeyError:
        known = ", ".join(f"{split}_{name}" for split in ("val", "test") for name in CATALOGUE)
        raise UserError(f"Unknown metric {metric!r}; rank on one of: {known}.") from None
    if not metric.startswith(("val_", "test_")):
        raise UserError(f"Rank on a validation (val_*) or test (test_*) metric, not {metric!r}.")


def build(tracking_uri: str, metric: str, *, arch=None, team=None, by=None, top=None, fmt="table") -> str:
    from mlflow import MlflowClient

    jobs = collect_jobs(MlflowClient(tracking_uri), tracking_uri, metric, arch=arch, team=team)
    hint = (
        "No finished searches yet"
        + (f" for arch {arch}" if arch else "")
        + (f" of team {team}" if team else "")
        + f". Run one with: python -m tuning.run --synthetic --arch {arch or 'cnn'} --num-samples 8"
        + (" --weights none" if arch and resolve_weights(arch, None) != "none" else "")
    )
    return render(rank(jobs, metric, by=by, top=top), study_rows(arch), metric, fmt, hint)


def main(argv: list[str] | None = None) -> int:
    from tuning.tracking import check_reachable, resolve_tracking_uri

    args = get_args_parser().parse_args(argv)
    if args.top is not None and args.top < 1:
        raise UserError("--top must be at least 1.")
    check_metric(args.metric)
    uri = resolve_tracking_uri(args.tracking_uri)
    check_reachable(uri)
    text = build(uri, args.metric, arch=args.arch, team=args.team, by=args.by, top=args.top, fmt=args.format)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            out.write(text)
        print(f"Leaderboard written to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    from fracture_models.cli import run_main

    sys.exit(run_main(main))
