"""The real entry point, cold: `python -m swax_megatron.train RECIPE` starts its 2 workers
through the local launcher; a SIGUSR1 sent to the launcher (as SLURM would send it) reaches
both workers, which checkpoint at the next step boundary and exit 42, and the launcher
returns 42 (torchrun would turn it into 1). The next start resumes from that checkpoint."""

from __future__ import annotations

import json
import signal
import time

from forkrun import TINY_RECIPE, find_run_dir, fork_run, run_module, tiny_overrides, train_records
from swax_megatron.exit_codes import EXIT_REQUEUE


def test_sigusr1_to_the_launcher_checkpoints_and_exits_42(tiny_corpus, tmp_path):
    overrides = tiny_overrides(tiny_corpus, tmp_path / "runs", steps=1000, every=1000)
    proc = run_module([TINY_RECIPE, *overrides], env={"OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            runs = tmp_path / "runs"
            metrics = [p / "metrics.jsonl" for p in runs.glob("tiny-swax-*")] if runs.exists() else []
            if metrics and metrics[0].exists() and '"kind": "train"' in metrics[0].read_text():
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_REQUEUE, out
    run_dir = find_run_dir(tmp_path / "runs")
    records = train_records(run_dir)
    ckpt = [r for r in records if r["kind"] == "checkpoint"]
    last_step = max(r["step"] for r in records if r["kind"] == "train")
    assert [(c["step"], c["reason"]) for c in ckpt] == [(last_step, "signal")]
    assert last_step < 1000
    assert "stop requested (SIGUSR1)" in out
    exit_info = json.loads((run_dir / "exit.json").read_text())
    assert exit_info["code"] == EXIT_REQUEUE and exit_info["step"] == last_step
    # The requeued job picks up there (and is stopped again one step later).
    again = fork_run([TINY_RECIPE, *overrides], 2, tmp_path / "l",
                     env={"SWAX_FAULT": f"signal@step:{last_step + 1}:USR1"})
    assert again.codes == [EXIT_REQUEUE] * 2, again.log
    assert f"at step {last_step}" in again.logs[0]
    steps = [r["step"] for r in train_records(run_dir) if r["kind"] == "train"]
    assert steps == list(range(1, last_step + 2))
