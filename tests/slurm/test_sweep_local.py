"""slurm/sweep.sh without SLURM, `--jobs K`: how many entries run at once, where their output
goes, and what a failure stops. The entries' trainer is replaced by a script that only records
when it ran (SWAX_SLURM_DIR points sweep.sh at it); the real trainer under a parallel local sweep
runs in tests/repro/test_smoke.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "recipes" / "repro" / "sweep.yaml"

# Entry 2 fails after half a second, the others succeed after one: with 2 at a time, entries
# 0 and 1 end together, 2 and 3 start, 2's failure stops the sweep before entry 4.
FAKE_PRETRAIN = r"""#!/bin/bash
i=$SWAX_SWEEP_INDEX
echo "start $i $(date +%s.%N)" >> "$EVENTS"
echo "entry $i ran"
if [ "$i" = 2 ]; then sleep 0.5; echo "end $i $(date +%s.%N)" >> "$EVENTS"; exit 3; fi
sleep 1
echo "end $i $(date +%s.%N)" >> "$EVENTS"
"""


def _sweep(tmp_path, *args):
    fake = tmp_path / "slurm"
    fake.mkdir(exist_ok=True)
    (fake / "pretrain.sh").write_text(FAKE_PRETRAIN)
    env = dict(os.environ, SWAX_PYTHON=sys.executable, SWAX_SLURM_DIR=str(fake),
               EVENTS=str(tmp_path / "events"))
    env.pop("SLURM_JOB_ID", None)
    return subprocess.run(["bash", str(REPO / "slurm" / "sweep.sh"), str(SWEEP),
                           f"run.output_root={tmp_path / 'runs'}", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def _run_dirs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "swax_megatron.cli", "recipe", "sweep", str(SWEEP),
                          f"run.output_root={tmp_path / 'runs'}", "--list"],
                         capture_output=True, text=True, check=True).stdout
    return [Path(line.split("\t")[1]) for line in out.splitlines()]


def test_jobs_run_k_at_a_time_and_stop_at_a_failure(tmp_path):
    dirs = _run_dirs(tmp_path)
    dirs[2].mkdir(parents=True)
    (dirs[2] / "sweep.log").write_text("an earlier attempt\n")
    res = _sweep(tmp_path, "--jobs", "2")
    assert res.returncode == 3, res.stdout + res.stderr
    assert "entry 2 stopped with exit code 3" in res.stderr
    assert "rerun to continue" in res.stderr

    events = [line.split() for line in (tmp_path / "events").read_text().splitlines()]
    started = [int(e[1]) for e in events if e[0] == "start"]
    assert sorted(started) == [0, 1, 2, 3]  # nothing after the failure; 3 was running: it finished
    assert sorted(int(e[1]) for e in events if e[0] == "end") == [0, 1, 2, 3]
    running = peak = 0
    for kind, _, t in sorted(events, key=lambda e: (float(e[2]), e[0] == "start")):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2
    # each entry's output appended to its run directory's sweep.log, earlier text kept
    assert (dirs[2] / "sweep.log").read_text() == "an earlier attempt\nentry 2 ran\n"
    assert (dirs[0] / "sweep.log").read_text() == "entry 0 ran\n"
    assert not dirs[4].exists()


def test_bad_jobs_value(tmp_path):
    for value in ("0", "two", "-1"):
        res = _sweep(tmp_path, "--jobs", value)
        assert res.returncode == 2
        assert res.stderr.strip() == f"sweep.sh: error: --jobs must be a positive integer, got '{value}'"
    assert not (tmp_path / "events").exists()
