"""The report's mean and spread over seeds (swax_megatron.eval.report.seed_tables): runs that
differ only in run.seed are pooled, others are not; numbers checked cell by cell."""

from __future__ import annotations

from pathlib import Path

from swax_megatron.config.resolve import resolve_sweep
from swax_megatron.eval.report import mean_spread, seed_tables
from swax_megatron.eval.report_data import Result, Run

SWEEP = Path(__file__).resolve().parents[2] / "recipes" / "repro" / "sweep.yaml"
EDGES = [0, 16, 32, 64]


def _run(label, recipe, val, accuracy):
    """A report Run as report_data.load_run builds it, with its final validation loss (summary)
    and one synth_passkey probes result at eval window 128 (bucket accuracies given, 10 probes
    each, so the result's value is their plain mean)."""
    result = Result(path=Path(f"{label}/eval/synth_passkey-w128.json"), task="synth_passkey",
                    kind="probes", window=128, step=100, settings_hash="0" * 40, created="",
                    score=None, data={"buckets": {"edges": EDGES, "accuracy": accuracy,
                                                "counts": [10] * len(accuracy)}})
    return Run(label=label, path=Path(label), exists=True, recipe_obj=recipe,
               summary={"val_loss": val, "eval_window": 128}, results=[result])


def test_mean_spread():
    assert mean_spread([1.0, 3.0, None]) == (2.0, 2.0 ** 0.5, 2)
    assert mean_spread([4.0]) == (4.0, None, 1)
    assert mean_spread([None]) == (None, None, 0)


def test_seed_tables_pool_only_seeds():
    entries = resolve_sweep(str(SWEEP))
    by_name = {e.recipe.run.name: e.recipe for e in entries}
    short = [n for n in by_name if "long=16" in n and "XS_2" in n]
    longw = [n for n in by_name if "long=128" in n and "XS_2" in n and "kind=fixed" in n]
    assert len(short) == 3 and len(longw) == 3
    runs = [_run(n, by_name[n], 2.0 + i, [100.0, 50.0 + 10 * i, 0.0]) for i, n in enumerate(short)]
    runs.append(_run(longw[0], by_name[longw[0]], 3.0, [100.0, 100.0, 100.0]))
    tables = dict(seed_tables(runs))
    loss = tables["final validation loss"]
    assert loss.rows[0] == [short[0].replace("__seed=1", ""), "3", "3.0000 ± 1.0000"]
    assert loss.rows[1] == [longw[0].replace("__seed=1", ""), "1", "3.0000"]
    recall = tables["`synth_passkey` at eval window 128"]
    assert recall.header == ["runs", "seeds", "[0, 16)", "[16, 32)", "[32, 64]", "avg"]
    assert recall.rows[0][1:] == ["3", "100.0 ± 0.0", "60.0 ± 10.0", "0.0 ± 0.0", "53.3 ± 3.3"]
    assert recall.rows[1][1:] == ["1", "100.0", "100.0", "100.0", "100.0"]
    assert seed_tables(runs[:1] + runs[3:]) == []  # no two runs share a configuration
