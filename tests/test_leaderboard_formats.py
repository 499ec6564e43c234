"""What a leaderboard export shows is the text a teammate typed, never markup or a live formula."""

from __future__ import annotations

import csv
import io

from mlflow import MlflowClient

from tuning.leaderboard import Group, Job, collect_jobs, render

HOSTILE = {
    "team": '=HYPERLINK("http://evil.example","click")',
    "user": "<script>alert(1)</script>",
    "job": "<img src=x onerror=alert(2)>|x",
}


def _groups() -> list[Group]:
    job = Job(
        team=HOSTILE["team"],
        user=HOSTILE["user"],
        arch="cnn",
        job=HOSTILE["job"],
        metric="val_fracture_f1",
        value=0.9,
        test={"test_accuracy": 0.8},
        trials=2,
        stopped_early=0,
        trial_hours=0.1,
        gpu_hours=0.0,
        date="2026-11-28 10:00",
        link="http://127.0.0.1:5000/#/experiments/1/runs/abc",
        data_fingerprint="f" * 20,
        image_size="32",
        rank=1,
    )
    return [Group(job.data_fingerprint, job.image_size, [job])]


def test_csv_cells_that_look_like_formulas_stay_text():
    rows = list(csv.DictReader(io.StringIO(render(_groups(), [], "val_fracture_f1", "csv", "none"))))
    assert rows[0]["team"] == "'" + HOSTILE["team"]
    assert rows[0]["best"] == "0.9000" and rows[0]["confirmed"] == "-"  # numbers and placeholders unchanged


def test_markdown_and_html_escape_what_users_typed():
    markdown = render(_groups(), [], "val_fracture_f1", "markdown", "none")
    assert "<script>" not in markdown and "<img" not in markdown and "&lt;script&gt;" in markdown
    assert "&lt;img src=x onerror=alert(2)&gt;\\|x" in markdown
    page = render(_groups(), [], "val_fracture_f1", "html", "none")
    assert "<script>" not in page and "<img src=x" not in page and "&lt;script&gt;" in page
    assert '<a href="http://127.0.0.1:5000/#/experiments/1/runs/abc">MLflow</a>' in page


def test_a_quote_in_the_team_filter_finds_nothing_instead_of_failing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("fracture-cnn")
    run = client.create_run(experiment, tags={"role": "search", "team": "x'", "arch": "cnn"}, run_name="quoted")
    client.log_metric(run.info.run_id, "best_val_fracture_f1", 0.8)
    client.set_terminated(run.info.run_id, "FINISHED")
    assert [j.team for j in collect_jobs(client, uri, "val_fracture_f1", team="x'")] == ["x'"]
    assert collect_jobs(client, uri, "val_fracture_f1", team="x' or tags.team != '") == []


def test_the_empty_board_suggests_a_search_of_the_architecture_asked_for(tmp_path):
    from tuning.leaderboard import build

    board = build(f"sqlite:///{tmp_path / 'mlflow.db'}", "val_fracture_f1", arch="vgg16")
    assert "No finished searches yet for arch vgg16" in board
    assert "python -m tuning.run --synthetic --arch vgg16 --num-samples 8 --weights none" in board


def test_a_data_group_is_named_by_what_a_reader_recognises():
    group = _groups()[0]
    job = group.jobs[0]
    job.files, job.generated_data = 10_581, True
    text = render([group], [], "val_fracture_f1", "text", "")
    assert "Generated data, 32 px, 10,581 images (ffffffffffff): ranked by val_fracture_f1" in text
    job.files, job.generated_data = None, False  # a job recorded before the count was
    assert group.name() == "Real data, 32 px (ffffffffffff)"
