"""Where a run's numbers came from: the versions of clamp, torch and Python, clamp's commit when it
runs from a git checkout, and the device a run resolved to (`device: auto` recorded as the one used).

Store layer: written into every summary.json under "environment", so two run directories whose
numbers differ can be told apart by what made them.
"""
from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def commit() -> str | None:
    """clamp's git commit (with '-dirty' when its checkout has changes), or None when clamp was not
    installed from a git checkout (or git is not there)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=40"],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@functools.lru_cache(maxsize=1)
def version() -> str | None:
    """clamp's installed version (pyproject.toml's), or None when it runs uninstalled."""
    try:
        return importlib.metadata.version("clamp")
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str | torch.device | None) -> dict:
    """The "environment" entry of summary.json."""
    env = {"clamp": version(), "commit": commit(), "torch": torch.__version__,
           "python": platform.python_version(), "device": str(device) if device is not None else None,
           "threads": torch.get_num_threads()}
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env
