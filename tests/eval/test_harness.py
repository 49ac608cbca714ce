"""`swax eval RUN_DIR` on a real tiny training run (forked swax-train, tests/training/forkrun.py):
results files in the report's format with the checkpoint step, heatmaps, skipping what is done,
redoing on changed settings or a new checkpoint, perplexity past the training length, the report
reading the files, and bad input as one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path.insert(0, str(TESTS / "training"))

from forkrun import TINY_RECIPE, find_run_dir, fork_run, tiny_overrides  # noqa: E402

from swax_megatron.cli import main  # noqa: E402

# Small: NIAH needs ~330 tokens of prompt plus 128 generated at this tokenizer.
SMALL = ["eval.lengths=[512]", "eval.samples=1", "eval.depths=[0, 100]", "eval.ppl_sequences=1",
         "eval.batch_size=2"]
TASKS = ["niah_single_1", "passkey", "mqar", "ppl_by_position"]
KINDS = {"niah_single_1": "generation", "passkey": "probes", "mqar": "probes",
         "ppl_by_position": "ppl_by_position"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from forkrun import make_tiny_corpus

    return make_tiny_corpus(tmp_path_factory.mktemp("eval_corpus"))


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    """8 steps, checkpoints at 4 and 8 (`latest`: 8)."""
    out = tmp_path_factory.mktemp("eval_run")
    argv = [TINY_RECIPE, *tiny_overrides(corpus, out / "runs", steps=8, every=4,
                                          extra=["slurm.gpus_per_node=1"])]
    launch = fork_run(argv, 1, out / "logs", timeout=180)
    assert launch.codes == [0], launch.log
    return find_run_dir(out / "runs")


def _copy(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("eval"))
    return dest


def _eval(capsys, run_dir, *args) -> tuple:
    code = main(["eval", str(run_dir), *args])
    out, err = capsys.readouterr()
    return code, out, err


def _results(run_dir: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted((run_dir / "eval").glob("*.json"))}


def test_eval_writes_skips_and_redoes(run, capsys, tmp_path):
    code, out, err = _eval(capsys, run, "--tasks", ",".join(TASKS), *SMALL)
    assert code == 0, err
    paths = [Path(p) for p in out.split()]
    assert [p.name.split("-w")[0] for p in paths] == TASKS
    for path in paths:
        assert path.parent == run / "eval"
        data = json.loads(path.read_text())
        task = data["task"]
        assert path.name == f"{task}-w64-{data['settings_hash'][:8]}.json"
        assert data["format"] == 1 and data["kind"] == KINDS[task] and data["window"] == 64
        assert data["checkpoint"]["step"] == 8 and data["checkpoint"]["path"].endswith("iter_0000008")
        assert len(data["settings_hash"]) == 64 and data["created"]
        if data["kind"] == "generation":
            grid = data["grid"]
            assert grid["lengths"] == [512] and grid["depths"] == [0.0, 100.0] and grid["n"] == 2
            assert 0.0 <= data["score"] <= 100.0 and data["score"] == grid["mean"]
            png = path.with_suffix(".png")
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        elif data["kind"] == "probes":
            assert sum(data["buckets"]["counts"]) >= 1 and 0.0 <= data["score"] <= 100.0
        else:
            ppl = data["ppl"]
            assert data["score"] is None and ppl["train_length"] == 128 and ppl["length"] == 1024
            b = ppl["buckets"]
            assert b[0]["start"] == 0 and b[-1]["end"] == 1024
            assert [x["end"] for x in b[:-1]] == [x["start"] for x in b[1:]]
            assert sum(x["tokens"] for x in b) == 1024
            beyond = [x for x in b if x["start"] >= 128]  # past the training length
            assert beyond and all(x["tokens"] > 0 and 0 < x["loss"] < 20 for x in beyond)
    # A barely trained model recalls nothing: scores near zero are expected (the scorers are
    # tested against an oracle in test_eval_niah / test_eval_recall).

    # Again: every file skipped, untouched.
    before = {p: p.stat().st_mtime_ns for p in (run / "eval").iterdir()}
    code, out2, err = _eval(capsys, run, "--tasks", ",".join(TASKS), *SMALL)
    assert code == 0 and out2 == out, err
    assert err.count("skipped") == len(TASKS) and "converting" not in err
    assert {p: p.stat().st_mtime_ns for p in (run / "eval").iterdir()} == before

    # A changed setting redoes what it affects: a new file for the task, the old one kept.
    code, out3, err = _eval(capsys, run, "--tasks", "passkey", *SMALL, "eval.seed=1")
    assert code == 0, err
    new = Path(out3.strip())
    assert new not in before and new.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())

    # The report reads them, with no notes of broken results.
    from swax_megatron.eval.report_data import read_results

    latest, _, notes = read_results(run)
    assert notes == [] and {r.task for r in latest} == set(TASKS)
    assert [r.step for r in latest] == [8] * len(latest)
    import subprocess

    proc = subprocess.run([sys.executable, str(REPO / "tools" / "summarize.py"), str(run), "--out",
                           str(tmp_path / "report")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "report" / "report.md").read_text()
    assert "skipped eval/" not in report and "skipped eval/" not in proc.stderr


def test_new_checkpoint_redoes(run, tmp_path, capsys):
    run_dir = _copy(run, tmp_path / "run")
    latest = run_dir / "checkpoints" / "latest"
    latest.write_text("iter_0000004\n")  # as the run looked at its first checkpoint
    code, out, err = _eval(capsys, run_dir, "--tasks", "mqar,ppl_by_position", *SMALL)
    assert code == 0, err
    first = [Path(p) for p in out.split()]
    assert {json.loads(p.read_text())["checkpoint"]["step"] for p in first} == {4}
    latest.write_text("iter_0000008\n")  # training went on
    code, out2, err = _eval(capsys, run_dir, "--tasks", "mqar,ppl_by_position", *SMALL)
    assert code == 0 and "skipped" not in err, err
    assert [Path(p) for p in out2.split()] == first  # the same settings: the same files, redone
    assert {json.loads(p.read_text())["checkpoint"]["step"] for p in first} == {8}
    # The step-4 results were moved aside, not overwritten: eval/previous/<stem>.step4.json.
    kept = sorted((run_dir / "eval" / "previous").glob("*.json"))
    assert [p.name for p in kept] == sorted(f"{p.stem}.step4.json" for p in first)
    assert {json.loads(p.read_text())["checkpoint"]["step"] for p in kept} == {4}


def _one_line(code, err, *fragments):
    assert code == 2
    lines = [x for x in err.strip().splitlines() if not x.startswith("swax eval: ")]  # progress
    assert len(lines) == 1 and lines[0].startswith("swax: error:"), err
    for f in fragments:
        assert f in lines[0], lines[0]


def test_bad_inputs_are_one_line(run, tmp_path, capsys):
    _one_line(*_eval(capsys, tmp_path / "nope")[::2], "not a directory")
    (tmp_path / "plain").mkdir()
    _one_line(*_eval(capsys, tmp_path / "plain")[::2], "not a run directory")
    _one_line(*_eval(capsys, run, "--tasks", "niah_single_9")[::2], "unknown evaluation task 'niah_single_9'")
    _one_line(*_eval(capsys, run, "eval.tasks=[bogus]")[::2], "eval.tasks.0: unknown evaluation task")
    _one_line(*_eval(capsys, run, "eval.samples=0")[::2], "eval.samples: must be >= 1")
    _one_line(*_eval(capsys, run, "model.hidden_size=8")[::2], "only eval.* settings")
    _one_line(*_eval(capsys, run, "--tasks", "niah_single_1", "eval.lengths=[200]")[::2],
              "niah_single_1: cannot build its samples")

    # No checkpoint: a run directory that has not saved one.
    import shutil

    empty = tmp_path / "empty-run"
    empty.mkdir()
    shutil.copy(run / "resolved.yaml", empty / "resolved.yaml")
    (empty / "checkpoints").mkdir()
    _one_line(*_eval(capsys, empty, "--tasks", "mqar")[::2], "no checkpoint")

    # A damaged checkpoint: a tensor file truncated.
    damaged = _copy(run, tmp_path / "damaged-run")
    ckpt = damaged / "checkpoints" / "iter_0000008"
    victim = max((p for p in ckpt.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    _one_line(*_eval(capsys, damaged, "--tasks", "mqar", *SMALL)[::2])
    assert not (damaged / "eval").exists() or not list((damaged / "eval").glob("*.json"))
