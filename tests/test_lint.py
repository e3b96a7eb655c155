"""The code is lint-clean (ruff, configured in pyproject.toml) and type-checks (mypy)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_is_clean():
    r = run("ruff", "check", "clamp", "tests", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_is_clean():
    r = run("mypy")                               # settings and files: [tool.mypy] in pyproject.toml
    assert r.returncode == 0, r.stdout + r.stderr
