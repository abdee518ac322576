"""Run the real `careloop` entry point in a subprocess, the way an operator does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CARELOOP = str(Path(sys.executable).with_name("careloop"))


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")} | (env or {})
    return subprocess.run([CARELOOP, *args], capture_output=True, text=True, env=full_env, timeout=timeout)
