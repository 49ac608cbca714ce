"""The recall probe during training (swax_megatron/training/validator.py).

- The vocab-parallel argmax equals torch.argmax of the whole logits, ties included (2 gloo ranks).
- The probe's argmax through megatron's forward-only schedule equals a plain reference (the bare
  model's logits, gathered over the vocabulary at TP=2, torch.argmax) position by position, and
  its score is task.score_probes of that argmax; the model's mode, window and RNG are restored.
- A run with the probe trains bitwise like one without (losses, grad norms, validation losses),
  in the parallel layouts (tensor parallel, pipeline parallel, data parallel: rows split over
  the replicas), and logs the probe at every evaluation to metrics.jsonl and TensorBoard; the
  probe of the same samples agrees across layouts.
- Disabled with eval.probe_samples=0; a training length too short for the task is one note.
"""

from __future__ import annotations

import math

import pytest
import torch

from dist import run_distributed
from forkrun import TINY_RECIPE, find_run_dir, fork_run, tiny_overrides, train_records


# --- vocab-parallel argmax --------------------------------------------------------------------------

def _argmax_body(rank, full):
    from swax_megatron.training.validator import vocab_parallel_argmax

    v = full.shape[-1] // 2
    return vocab_parallel_argmax(full[..., rank * v:(rank + 1) * v].clone(), torch.distributed.group.WORLD)


def test_vocab_parallel_argmax_equals_argmax_ties_included():
    g = torch.Generator().manual_seed(0)
    full = torch.randint(0, 5, (2, 7, 16), generator=g).float()  # many ties, across the halves
    full[0, 0] = 0.0
    full[0, 0, 3] = full[0, 0, 11] = 9.0  # equal maxima on both ranks: the first wins
    full[1, 2, 12] = 9.0  # the maximum on the second rank only
    out = run_distributed(_argmax_body, 2, full, timeout=60)
    assert torch.equal(out[0], out[1])
    assert torch.equal(out[0], full.argmax(-1))
    assert out[0][0, 0] == 3 and out[0][1, 2] == 12


# The passkey prompt with the tests' 512-piece tokenizer takes about 150 tokens.
PROBE_LENGTH = "train.seq_length=256"


# --- the probe against a plain reference (one process) ----------------------------------------------

def _reference_body(rank, corpus):
    from megatron.core import parallel_state as ps

    from swax_megatron.config.resolve import resolve
    from swax_megatron.data import tokenizer_from_config
    from swax_megatron.training.batches import BatchLayout
    from swax_megatron.training.engine import build_engine
    from swax_megatron.training.metrics import NullLogger
    from swax_megatron.training.validator import RecallProbe, probe_depths

    recipe = resolve(TINY_RECIPE, tiny_overrides(corpus, corpus["root"]) + [
        "eval.probe_samples=3", "eval.seed=5", PROBE_LENGTH]).recipe
    tok = tokenizer_from_config(recipe.data, corpus["cache"])
    engine = build_engine(recipe, tok.vocab_size, torch.device("cpu"))
    layout = BatchLayout(recipe.train.micro_batch_size, recipe.train.global_batch_size,
                         ps.get_data_parallel_world_size(), ps.get_data_parallel_rank())
    probe = RecallProbe.build(engine, tok, recipe.eval, recipe.train.seq_length, layout, NullLogger())
    rng_before = torch.get_rng_state()
    got = probe.run(window=32)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert engine.model.swa_window == recipe.model.swa.window and engine.ddp.training

    # the plain reference: the bare model's logits at window 32, argmax, the task's scorer
    engine.model.set_swa_window(32)
    engine.model.eval()
    hits, token_acc, probes, same = 0.0, 0.0, 0, []
    with torch.no_grad():
        fast = probe.argmax_rows()  # the probe's path: megatron's schedule, DDP, vocab-parallel
        for s, row, got_row in zip(probe.samples, probe.tokens, fast):
            assert row.shape == (1, recipe.train.seq_length) and row[0, 0] == tok.eod
            logits = engine.model(row)[0]  # [s, vocab / tp]: this rank's vocabulary slice
            if torch.distributed.get_world_size() > 1:  # tp ranks = the world here
                parts = [torch.empty_like(logits) for _ in range(torch.distributed.get_world_size())]
                torch.distributed.all_gather(parts, logits.contiguous())
                logits = torch.cat(parts, dim=-1)
            argmax = logits.argmax(-1)
            same.append(torch.equal(argmax, got_row))
            for r in probe.task.score_probes(s, argmax[1:].tolist()):
                hits, token_acc, probes = hits + r["score"], token_acc + r["token_accuracy"], probes + 1
    assert all(same) and len(same) == 3
    engine.model.set_swa_window(recipe.model.swa.window)
    engine.model.train()
    depths = [s.metadata["depth"] for s in probe.samples]
    return got, {"score": 100.0 * hits / probes, "token_accuracy": 100.0 * token_acc / probes,
                 "probes": probes}, depths, probe_depths(3)


@pytest.mark.parametrize("tp", [1, 2])
def test_probe_equals_plain_reference(tiny_corpus, tmp_path, tp):
    corpus = dict(tiny_corpus, root=tmp_path / "runs")
    out = run_distributed(_reference_body, tp, corpus, tp=tp, timeout=120)
    got, ref, depths, expected_depths = out[0]
    assert all(o[0] == got for o in out)  # every rank logs the same (rank 0 writes it)
    assert got["probes"] == ref["probes"] == 3 and got["samples"] == 3
    assert got["task"] == "passkey" and got["length"] == 256
    assert got["score"] == ref["score"] and got["token_accuracy"] == ref["token_accuracy"]
    assert depths == expected_depths == [0.0, 50.0, 100.0]


# --- training with the probe is training without it --------------------------------------------------

LAYOUTS = {
    "tp2": ["parallel.tensor_model_parallel_size=2"],
    "pp2": ["parallel.pipeline_model_parallel_size=2"],
    "dp2": [],  # 3 samples over 2 replicas: 2 + 1 rows
}


def _run(corpus, root, layout, samples):
    runs = root / f"{layout}-{samples}" / "runs"
    argv = [TINY_RECIPE, *tiny_overrides(corpus, runs, extra=[
        *LAYOUTS[layout], f"eval.probe_samples={samples}", PROBE_LENGTH,
        "train.window_schedule.kind=stochastic"])]
    launch = fork_run(argv, 2, root / f"{layout}-{samples}" / "logs", timeout=180)
    assert launch.codes == [0, 0], launch.log
    return find_run_dir(runs), launch


@pytest.fixture(scope="module")
def runs(tiny_corpus, tmp_path_factory):
    cache = {}

    def get(layout, samples):
        if (layout, samples) not in cache:
            cache[layout, samples] = _run(tiny_corpus, tmp_path_factory.mktemp("probe"), layout, samples)
        return cache[layout, samples]
    return get


def _probe_records(run_dir):
    return [r for r in train_records(run_dir) if r["kind"] == "probe"]


@pytest.mark.parametrize("layout", ["tp2", "pp2", "dp2"])
def test_probe_does_not_change_training(runs, layout):
    plain, _ = runs(layout, 0)
    probed, launch = runs(layout, 3)
    keep = ("train", "eval")
    a = [r for r in train_records(plain) if r["kind"] in keep]
    b = [r for r in train_records(probed) if r["kind"] in keep]
    drop = ("tokens_per_s", "step_time_s", "mfu")  # wall-clock
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
           [{k: v for k, v in r.items() if k not in drop} for r in b]
    assert not _probe_records(plain)
    probes = _probe_records(probed)
    assert [r["step"] for r in probes] == [4, 8]  # every train.eval_every and the last step
    for r in probes:
        assert r["task"] == "passkey" and r["samples"] == r["probes"] == 3 and r["window"] == 64
        # a probe scores 1 only when all its answer tokens are right
        assert 0.0 <= r["score"] <= r["token_accuracy"] <= 100.0
    assert "passkey probe" in launch.logs[0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(probed / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("probe/passkey")] == [4, 8]


def test_probe_agrees_across_layouts(runs):
    """The same samples on the same (to round-off) model: the same answers, up to a near-tie."""
    results = {layout: _probe_records(runs(layout, 3)[0]) for layout in LAYOUTS}
    first = results["tp2"]
    for layout, recs in results.items():
        for r, q in zip(recs, first):
            assert r["probes"] == q["probes"]
            # one answer token in a few hundred may flip on round-off between layouts
            assert math.isclose(r["token_accuracy"], q["token_accuracy"], abs_tol=2.0), (layout, r, q)


def test_probe_too_long_for_the_training_length_is_one_note(tiny_corpus, tmp_path):
    runs_root = tmp_path / "runs"
    argv = [TINY_RECIPE, *tiny_overrides(tiny_corpus, runs_root, steps=2, extra=[
        "eval.probe_samples=2", "slurm.gpus_per_node=1"])]
    launch = fork_run(argv, 1, tmp_path / "logs", timeout=120)
    assert launch.codes == [0], launch.log
    notes = [line for line in launch.logs[0].splitlines() if "no recall probe" in line]
    assert len(notes) == 1 and "train.seq_length 128" in notes[0], launch.log
    assert not _probe_records(find_run_dir(runs_root))
