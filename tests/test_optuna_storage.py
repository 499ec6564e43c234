"""The Optuna storage opens when another process opens it for the first time at the same moment."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from tuning.searcher import _lost_schema_race, open_storage

OPENERS = 4


def _open_together(url: str) -> list[BaseException]:
    barrier = threading.Barrier(OPENERS)
    errors: list[BaseException] = []

    def open_it() -> None:
        barrier.wait()
        try:
            open_storage(url).get_all_studies()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(OPENERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_a_fresh_sqlite_storage_opened_at_once_by_several_openers(tmp_path: Path):
    # Without the retry, 4 openers of a fresh file collide on CREATE TABLE in most rounds.
    for round_ in range(5):
        url = f"sqlite:///{tmp_path / f'optuna-{round_}.db'}"
        assert _open_together(url) == []
        optuna.create_study(study_name="s", storage=open_storage(url))
        assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["s"]


def test_a_fresh_postgres_storage_opened_at_once_by_several_openers(postgres_database):
    for round_ in range(3):
        url = postgres_database(f"optuna_race{round_}")
        assert _open_together(url) == []
        optuna.create_study(study_name="s", storage=open_storage(url))
        assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["s"]


def test_only_the_schema_race_is_retried(tmp_path: Path):
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("CREATE TABLE studies (id INTEGER PRIMARY KEY)"))
    with pytest.raises(sqlalchemy.exc.DatabaseError) as created_twice, engine.begin() as connection:
        connection.execute(sqlalchemy.text("CREATE TABLE studies (id INTEGER PRIMARY KEY)"))
    assert _lost_schema_race(created_twice.value)

    with pytest.raises(sqlalchemy.exc.DatabaseError) as refused:
        open_storage("postgresql://nobody@127.0.0.1:9/none?connect_timeout=1")
    assert not _lost_schema_race(refused.value)
