from __future__ import annotations

import subprocess
import sys

HEAVY = ("apache_beam", "feast", "ray", "torch", "pandas", "duckdb", "pyarrow", "fastapi", "pydicom", "fhir", "kafka")


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys\nfrom careloop.cli import app\n"
        "try:\n    app(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
