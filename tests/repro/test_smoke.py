"""`bash tools/reproduce.sh --smoke OUT_DIR` end to end (issue 14): data (tokenizer, recall
documents), two training runs through slurm/sweep.sh, `swax eval` on both, the report.
It checks that the pipeline runs and writes what the report reads; it asserts no science (a
few steps learn nothing). Needs the hf extra (the evaluation runs the Hugging Face model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "reproduce.sh"


def _run(*args, timeout=900):
    env = dict(os.environ, SWAX_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def test_smoke_pipeline(tmp_path):
    out = tmp_path / "repro"
    res = _run("--smoke", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    meta = json.loads((out / "data" / "recall.meta.json").read_text())
    assert meta["documents"] == 400 and meta["recall"]["length"] == 128
    assert meta["kinds"] == {"mqar": 0, "passkey": 400}

    runs = sorted(p for p in (out / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 2 and all((r / "DONE").exists() for r in runs)
    assert {"long=16" in r.name for r in runs} == {True, False}
    for r in runs:
        files = {p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in (r / "eval").glob("*.json")}
        assert files == {f"{t}-w{w}" for t in ("synth_passkey", "ppl_by_position")
                         for w in (16, 128)}
        pk = json.loads(next((r / "eval").glob("synth_passkey-w128-*.json")).read_text())
        assert pk["kind"] == "probes" and pk["checkpoint"]["step"] == 8
        # lengths 1x and 2x the training length, one passkey per document, 2 documents each
        assert sorted(pk["buckets"]["by_length"]) == ["128", "256"]
        assert sum(pk["buckets"]["counts"]) == 2 * 2
        assert pk["buckets"]["edges"] == [0, 16, 32, 64, 128, 256]  # the task's edges
        assert 0.0 <= pk["score"] <= 100.0
        probes = [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()
                  if '"probe"' in line]
        assert probes and all(p["task"] == "synth_passkey" for p in probes)

    report = (out / "report" / "report.md").read_text()
    assert "synth_passkey" in report
    assert all(r.name.rsplit("-", 1)[0] in report for r in runs)
    assert (out / "report" / "report.html").is_file()
    timing = json.loads((out / "timing.json").read_text())
    assert timing["runs"] == 2 and timing["total"] >= timing["train"] > 0
    # as many runs at once as cores (smoke.yaml: 1 thread each); each run's evaluation output,
    # and with more than one at a time its training output, in its run directory
    assert timing["jobs"] == len(os.sched_getaffinity(0))
    for r in runs:
        if timing["jobs"] > 1:
            assert "training finished" in (r / "sweep.log").read_text()
        assert "synth_passkey" in (r / "eval.log").read_text()


def test_bad_arguments(tmp_path):
    for args, says in (((), "usage"), (("--smok", str(tmp_path)), "unknown option --smok"),
                       ((str(tmp_path / "a"), str(tmp_path / "b")), "one OUT_DIR"),
                       (("--jobs", "0", str(tmp_path / "a")), "--jobs must be a positive integer")):
        res = _run(*args, timeout=60)
        assert res.returncode == 2 and says in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()
