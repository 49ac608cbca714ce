"""The installation promises of setup.cfg and the README hold together."""

from __future__ import annotations

import configparser
import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _extra(name: str) -> dict:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = [ln.split("#")[0].strip() for ln in cfg["options.extras_require"][name].splitlines()]
    return {r.name: r for r in map(Requirement, filter(None, lines))}


def test_the_gpu_extra_asks_for_the_transformer_engine_megatron_core_is_tested_with():
    ours = _extra("gpu")["transformer-engine"]
    theirs = [Requirement(r) for r in importlib.metadata.requires("megatron-core")
              if r.startswith("transformer-engine") and 'extra == "dev"' in r]
    assert theirs, "megatron-core no longer names its Transformer Engine range"
    assert ours.specifier == theirs[0].specifier, (ours, theirs[0])


def test_the_triton_pins_agree():
    assert _extra("gpu")["triton"].specifier == _extra("triton")["triton"].specifier


def test_the_readme_gpu_install_line_names_the_gpu_extra():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## GPU installation", 1)[1].split("\n## ", 1)[0]
    assert re.search(r'pip install --no-build-isolation -e "\.\[[^"]*\bgpu\b[^"]*\]"', section), section
