"""Shared rich consoles: results to stdout, diagnostics to stderr (so `--format csv` output stays clean)."""

from __future__ import annotations

from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
