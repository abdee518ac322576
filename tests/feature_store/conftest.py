"""One lake with the Eunomia OMOP sample and one applied Feast store per module (Feast start-up costs seconds)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from careloop.settings import Settings, load_settings

EUNOMIA = ("omop", "eunomia_synthea27nj")


@pytest.fixture(scope="module")
def fs_settings(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Settings]:
    """Settings with an isolated home whose lake holds the Eunomia persons and whose Feast repo is applied."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CARELOOP_")}
    home = tmp_path_factory.mktemp("fs-home")
    os.environ["CARELOOP_HOME"] = str(home)
    try:
        settings = load_settings()
        from careloop.duck import connect
        from feature_store import apply, load_omop_csv

        con = connect(settings)
        load_omop_csv(con, shared_data.joinpath(*EUNOMIA))
        con.close()
        apply(settings)
        yield settings
    finally:
        os.environ.pop("CARELOOP_HOME", None)
        os.environ.update(saved)


@pytest.fixture(scope="module")
def fs_con(fs_settings: Settings):
    from careloop.duck import connect

    con = connect(fs_settings)
    yield con
    con.close()
