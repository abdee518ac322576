"""Fixtures for the transforms tests: a lake with the Eunomia vocabulary, loaded once per session and copied."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from careloop.duck import connect
from careloop.settings import Settings, load_settings


@pytest.fixture(scope="session")
def vocab_lake(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A lake folder with the OMOP schema and the Eunomia vocabulary (built once, copied per test)."""
    from transforms import load_vocabulary

    home = tmp_path_factory.mktemp("vocab-home")
    con = connect(Settings(home=home))
    load_vocabulary(con, shared_data / "omop" / "eunomia_synthea27nj")
    con.close()
    return home / "lake"


def copy_lake(src: Path, settings: Settings) -> None:
    """Copy a lake folder and point its catalog at the copy's data folder (DuckLake stores DATA_PATH)."""
    dst = settings.path("lake")
    shutil.copytree(src, dst, dirs_exist_ok=True)
    with sqlite3.connect(dst / "catalog.sqlite") as db:
        db.execute("UPDATE ducklake_metadata SET value = ? WHERE key = 'data_path'", (f"{dst / 'data'}/",))


@pytest.fixture
def omop_settings(lake_settings: Settings, vocab_lake: Path) -> Settings:
    copy_lake(vocab_lake, lake_settings)
    return load_settings()


@pytest.fixture
def stream_settings(settings: Settings, vocab_lake: Path) -> Settings:
    copy_lake(vocab_lake, settings)
    return settings


@pytest.fixture(scope="session")
def vocab(vocab_lake: Path):
    """The Eunomia vocabulary as the mapping DoFns see it."""
    from transforms.vocab import Vocabulary

    con = connect(Settings(home=vocab_lake.parent), read_only=True)
    try:
        return Vocabulary.from_lake(con)
    finally:
        con.close()
