"""The report's mean and spread over seeds (swax_megatron.eval.report.seed_tables): runs that
differ only in run.seed are pooled, others are not; numbers checked cell by cell."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swax_megatron.config.resolve import resolve_sweep
from swax_megatron.eval.report import mean_spread, seed_tables

SWEEP = Path(__file__).resolve().parents[2] / "recipes" / "repro" / "sweep.yaml"
EDGES = [0, 16, 32, 64]


@dataclass
class FakeResult:
    task: str
    window: int
    accuracy: list
    kind: str = "probes"

    @property
    def buckets(self):
        return {"edges": EDGES, "accuracy": self.accuracy}

    @property
    def value(self):
        return sum(self.accuracy) / len(self.accuracy)


@dataclass
class FakeRun:
    label: str
    recipe_obj: object
    val: float
    results: list = field(default_factory=list)

    def final_val(self):
        return self.val, 100

    def results_of(self, kind, window=None):
        return [r for r in self.results if r.kind == kind and (window is None or r.window == window)]


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
    runs = [FakeRun(n, by_name[n], 2.0 + i, [FakeResult("synth_passkey", 128, [100.0, 50.0 + 10 * i, 0.0])])
            for i, n in enumerate(short)]
    runs.append(FakeRun(longw[0], by_name[longw[0]], 3.0,
                        [FakeResult("synth_passkey", 128, [100.0, 100.0, 100.0])]))
    tables = dict(seed_tables(runs))
    loss = tables["final validation loss"]
    assert loss.rows[0] == [short[0].replace("__seed=1", ""), "3", "3.0000 ± 1.0000"]
    assert loss.rows[1] == [longw[0].replace("__seed=1", ""), "1", "3.0000"]
    recall = tables["`synth_passkey` at eval window 128"]
    assert recall.header == ["runs", "seeds", "[0, 16)", "[16, 32)", "[32, 64]", "avg"]
    assert recall.rows[0][1:] == ["3", "100.0 ± 0.0", "60.0 ± 10.0", "0.0 ± 0.0", "53.3 ± 3.3"]
    assert recall.rows[1][1:] == ["1", "100.0", "100.0", "100.0", "100.0"]
    assert seed_tables(runs[:1] + runs[3:]) == []  # no two runs share a configuration
