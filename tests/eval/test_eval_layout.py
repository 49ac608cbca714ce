"""Evaluation at the run's parallel layout (eval/layout.py) and the megatron model's incremental
decoding (models.model.InferenceState) it generates with.

- Decoding: a prefill then one token per call gives the logits of a full re-forward of the whole
  prefix at every step (S, G and X layers, prompts longer than the window, GQA), and a left-padded
  row gives what it gives alone; at TP=1 and TP=2 (forked gloo ranks, tests/dist.py).
- Layout: the teacher-forced kinds (passkey probes, perplexity by position) and one NIAH variant
  evaluated on a real tiny TP=2 checkpoint at its layout (2 gloo ranks) equal the single-process
  Hugging Face path. Tolerances (fp32): argmax-identical predictions and generated text, equal
  probe scores; perplexity-bucket losses within 1e-4 relative; decoding logits within 1e-4.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "models"))

from dist import run_distributed  # noqa: E402
from swax_model_testing import build, tiny_config  # noqa: E402

WINDOW, PROMPT, STEPS = 5, 11, 4


def _decode_vs_reforward(rank, pattern, tp):
    """Per step: (incremental logits, re-forward logits) of this rank's vocab shard, and the
    padded row against the same row alone."""
    from swax_megatron.models.model import InferenceState

    torch.manual_seed(0)
    cfg = tiny_config(pattern, tp=tp, swa_window=WINDOW, mlstm_chunk_size=4,
                      max_sequence_length=PROMPT + STEPS)
    model = build(cfg).eval()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 128, (2, PROMPT + STEPS), generator=g)
    out = {"steps": [], "padded": []}
    with torch.no_grad():
        state = InferenceState()
        step = model(ids[:, :PROMPT], inference_state=state)[:, -1]
        for t in range(STEPS):
            full = model(ids[:, :PROMPT + t])[:, -1]
            out["steps"].append((step.clone(), full))
            if t + 1 < STEPS:
                step = model(ids[:, PROMPT + t:PROMPT + t + 1], inference_state=state)[:, -1]
        # Row 0 with 3 tokens fewer, left padded (pad id 0), next to row 1: row 0 must equal itself alone.
        short = ids[0, 3:PROMPT]
        padded = torch.stack([torch.cat([torch.zeros(3, dtype=torch.long), short]), ids[1, :PROMPT]])
        mask = torch.ones_like(padded, dtype=torch.bool)
        mask[0, :3] = False
        state, alone = InferenceState(), InferenceState()
        state.set_padding(mask)
        a = model(padded, inference_state=state)[0, -1]
        b = model(short[None], inference_state=alone)[0, -1]
        out["padded"].append((a, b))
        for t in range(STEPS - 1):
            nxt = ids[:, PROMPT + t:PROMPT + t + 1]
            a = model(nxt, inference_state=state)[0, -1]
            b = model(nxt[:1], inference_state=alone)[0, -1]
            out["padded"].append((a, b))
    return out


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("pattern", ["XSG", "SX"])
def test_incremental_decode_equals_reforward(pattern, tp):
    results = run_distributed(_decode_vs_reforward, tp, pattern, tp, tp=tp, timeout=120)
    for out in results:
        for t, (step, full) in enumerate(out["steps"]):
            assert torch.allclose(step, full, rtol=1e-4, atol=1e-4), \
                f"step {t}: max diff {(step - full).abs().max():.3g}"
            assert step.argmax(-1).tolist() == full.argmax(-1).tolist()
        for t, (a, b) in enumerate(out["padded"]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), f"padded step {t}: {(a - b).abs().max():.3g}"


# --- the run's layout against the single-process Hugging Face path ------------------------------------

# Small: one NIAH batch of two prompts (different lengths: left padding) longer than the window (64),
# passkey probes, perplexity over 8 x the training length.
SMALL = ["eval.lengths=[512]", "eval.samples=1", "eval.depths=[0, 100]", "eval.ppl_sequences=1",
         "eval.batch_size=2"]
TASKS = ["niah_single_1", "passkey", "ppl_by_position"]


def _trained(tmp_path_factory, name: str) -> Path:
    """Real tiny runs (tests/hf/convert_testing.py, shared with tests/hf in the same session):
    "tp2" trained at TP=2 (XSGX: mLSTM, sliding and global layers; untied output, q/k/v biases),
    "pp2" at PP=2 (XS|GX, tied embeddings)."""
    pytest.importorskip("transformers", reason="evaluation needs the hf extra")
    sys.path.insert(0, str(TESTS / "hf"))
    from convert_testing import RUNS, train

    return train(tmp_path_factory, name, RUNS[name])


@pytest.fixture(scope="module")
def tp2_run(tmp_path_factory):
    return _trained(tmp_path_factory, "tp2")


def _copy(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("eval"))
    return dest


def _results(paths) -> dict:
    import json

    return {json.loads(Path(p).read_text())["task"]: json.loads(Path(p).read_text()) for p in paths}


def _evaluate_in_world(rank, run_dir, tasks, overrides):
    from swax_megatron.eval.layout import evaluate_in_world

    return [str(p) for p in evaluate_in_world(run_dir, tasks, overrides, progress=False)]


def _compare_layouts(run: Path, tmp_path: Path, tp: int, pp: int):
    from swax_megatron.eval.harness import evaluate_run

    single, layout = _copy(run, tmp_path / "single"), _copy(run, tmp_path / "run")
    a = _results(evaluate_run(single, tasks=TASKS, overrides=SMALL, progress=False))
    paths = run_distributed(_evaluate_in_world, tp * pp, layout, TASKS, SMALL, tp=tp, pp=pp, timeout=300)
    assert all(p == paths[0] for p in paths)
    b = _results(paths[0])
    written = [Path(p) for p in paths[0]] + [Path(p).with_suffix(".png") for p in paths[0] if "niah" in p]
    assert sorted((layout / "eval").iterdir()) == sorted(written)  # rank 0 wrote them, once

    for task in TASKS:
        x, y = a[task], b[task]
        # The same settings hash (the file's name): the layout only says who computed it.
        assert x["settings_hash"] == y["settings_hash"] and x["settings"] == y["settings"]
        assert x["layout"] == {"kind": "single", "backend": "hf", "tp": 1, "pp": 1}
        assert y["layout"] == {"kind": "run", "backend": "megatron", "tp": tp, "pp": pp}
        assert x["checkpoint"] == {**y["checkpoint"], "path": x["checkpoint"]["path"]}
    return a, b


def _assert_same_results(a: dict, b: dict) -> None:
    niah_a, niah_b = a["niah_single_1"], b["niah_single_1"]
    assert len(niah_a["records"]) == 2
    assert [r["prediction"] for r in niah_a["records"]] == [r["prediction"] for r in niah_b["records"]]
    assert any(r["prediction"] for r in niah_a["records"])  # something was generated
    assert niah_a["grid"] == niah_b["grid"]
    assert a["passkey"]["buckets"] == b["passkey"]["buckets"]
    assert a["passkey"]["token_accuracy"] == b["passkey"]["token_accuracy"]
    ba, bb = a["ppl_by_position"]["ppl"]["buckets"], b["ppl_by_position"]["ppl"]["buckets"]
    assert [(x["start"], x["end"], x["tokens"]) for x in ba] == [(x["start"], x["end"], x["tokens"]) for x in bb]
    for x, y in zip(ba, bb):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4)


def test_tp2_layout_equals_single_process(tp2_run, tmp_path):
    _assert_same_results(*_compare_layouts(tp2_run, tmp_path, tp=2, pp=1))


@pytest.mark.slow
def test_pp2_layout_equals_single_process(tmp_path_factory, tmp_path):
    """PP=2: stage to stage by send / recv, the last stage's results broadcast."""
    _assert_same_results(*_compare_layouts(_trained(tmp_path_factory, "pp2"), tmp_path, tp=1, pp=2))


# --- the command line ------------------------------------------------------------------------------

def test_layout_bad_input_is_one_line(tmp_path, capsys):
    from swax_megatron.cli import main

    pytest.importorskip("transformers", reason="swax eval needs the hf extra")
    assert main(["eval", str(tmp_path), "--layout", "run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"swax: error: {tmp_path}: not a run directory (no resolved.yaml)"]
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path), "--layout", "sideways"])
    assert e.value.code == 2 and "invalid choice: 'sideways'" in capsys.readouterr().err
    from swax_megatron.eval.harness import EvalError, evaluate_run

    with pytest.raises(EvalError, match="unknown layout 'sideways'"):
        evaluate_run(tmp_path, layout="sideways")


def _swax(*args, env=None, timeout=600):
    import subprocess

    return subprocess.run([sys.executable, "-m", "swax_megatron.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.slow
def test_cli_layout_run_starts_workers(tp2_run, tmp_path):
    """`swax eval --layout run` on a TP=2 run: 2 local worker processes, one results file written by
    rank 0 at TP=2; run again, nothing to do and no process started."""
    import json
    import subprocess

    run_dir = _copy(tp2_run, tmp_path / "run")
    args = ["eval", str(run_dir), "--layout", "run", "--tasks", "passkey", *SMALL]
    p = _swax(*args)
    assert p.returncode == 0, p.stderr
    assert "2 processes at the run's layout TP=2 x PP=1" in p.stderr
    path = Path(p.stdout.strip())
    assert json.loads(path.read_text())["layout"] == {"kind": "run", "backend": "megatron", "tp": 2, "pp": 1}
    p = _swax(*args)
    assert p.returncode == 0 and p.stdout.strip() == str(path) and "skipped" in p.stderr
    assert "processes" not in p.stderr
    w = subprocess.run([sys.executable, "-m", "swax_megatron.eval.layout", "--world", str(run_dir)],
                       capture_output=True, text=True, timeout=120)
    assert w.returncode == 0 and w.stdout.strip() == "2"


@pytest.mark.slow
def test_slurm_eval_sh_sruns_the_ranks(tp2_run, tmp_path):
    """`swax eval submit --layout run` on a real one-node SLURM (tests/slurm/slurm_cluster.py): the
    array task asks for 2 tasks and slurm/eval.sh sruns the 2 ranks of the TP=2 run."""
    import json
    import os
    import shutil
    import tempfile

    sys.path.insert(0, str(TESTS / "slurm"))
    from slurm_cluster import LocalCluster, missing_binaries

    if missing_binaries() or os.geteuid() != 0:
        pytest.skip("needs SLURM (slurm-wlm, munge) and root")
    run_dir = _copy(tp2_run, tmp_path / "run")
    root = tempfile.mkdtemp(prefix="swax-slurm-eval-layout-")
    os.chmod(root, 0o755)  # munged wants every folder above its socket searchable by all
    cluster = LocalCluster(root, cpus=8, gpus=0, partitions=(("cpu", "INFINITE"),))
    cluster.up()
    try:
        env = dict(cluster.env, SWAX_PYTHON=sys.executable,
                   PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        env.pop("SWAX_LOCAL", None)
        p = _swax("eval", "submit", str(run_dir), "--layout", "run", "--tasks", "passkey", *SMALL, env=env)
        assert p.returncode == 0, p.stderr
        job = p.stdout.strip().splitlines()[-1]
        states = cluster.wait(job, 600)
        out = Path(states[0]["StdOut"]).read_text() if Path(states[0]["StdOut"]).is_file() else ""
        assert [s["JobState"] for s in states] == ["COMPLETED"], out or cluster.logs()
        assert states[0]["NumTasks"] == "2"
        assert "2 ranks (srun) at the run's layout" in out and f"evaluated {run_dir}" in out, out
        (path,) = (run_dir / "eval").glob("passkey-*.json")
        assert json.loads(path.read_text())["layout"]["tp"] == 2
    finally:
        cluster.down()
        shutil.rmtree(root, ignore_errors=True)
