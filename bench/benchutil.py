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


def replace_section(path, heading: str, lines) -> None:
    """Put `lines` (starting with `heading`, a '## ' line) into the markdown file `path` in place of
    its section under that heading (up to the next '## '), or at the end when it has none."""
    from pathlib import Path

    path = Path(path)
    text = path.read_text()
    body = "\n".join(lines).rstrip("\n") + "\n"
    start = text.find(heading)
    if start < 0:
        path.write_text(text.rstrip("\n") + "\n\n" + body)
        return
    end = text.find("\n## ", start + len(heading))
    rest = "" if end < 0 else "\n" + text[end + 1:]
    path.write_text(text[:start] + body + rest)
