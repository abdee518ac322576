"""Shared fixtures: one real Tansu broker per test session, and an isolated CARELOOP_HOME per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from careloop.broker import LocalBroker
from careloop.settings import Settings, load_settings

# CI must be reproducible: there Hypothesis explores a fixed sequence of examples. Developer runs keep random
# exploration (that is how the fuzzers found the bugs they pin as regression tests).
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"shared test data missing at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Kafka-protocol broker (Tansu) on a free loopback port, stopped by PID at session end."""
    home = tmp_path_factory.mktemp("broker-home")
    lb = LocalBroker(Settings(home=home, broker_start_timeout_s=30))
    state = lb.start()
    try:
        yield state.bootstrap
    finally:
        lb.stop()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated CARELOOP_HOME with generated keys; environment cleared of outer careloop settings."""
    for key in list(os.environ):
        if key.startswith("CARELOOP_"):
            monkeypatch.delenv(key)
    h = tmp_path / "home"
    monkeypatch.setenv("CARELOOP_HOME", str(h))
    monkeypatch.chdir(tmp_path)
    return h


@pytest.fixture
def settings(home: Path, broker: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings that use the session broker, with a topic prefix of their own (topics are cheap on Tansu)."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    monkeypatch.setenv("CARELOOP_KAFKA_BOOTSTRAP", broker)
    monkeypatch.setenv("CARELOOP_TOPIC_PREFIX", prefix)
    s = load_settings()
    from careloop.topics import ensure_topics

    ensure_topics(s)
    return s


@pytest.fixture
def lake_settings(home: Path) -> Settings:
    """Settings for tests that need the lake but no broker."""
    return load_settings()
