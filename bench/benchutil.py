"""Helpers shared by the CPU benchmark scripts (imported as a sibling: `python bench/<script>.py`)."""

from __future__ import annotations

import json
import platform
import subprocess


def emit(row: dict) -> None:
    """One JSON row on stdout."""
    print(json.dumps(row), flush=True)


def cpu_model() -> str:
    """The CPU's model name (lscpu), for the machine line of bench/RESULTS.md."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"
