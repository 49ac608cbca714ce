import json
import math
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from swax_megatron.training.window_schedule import WindowSchedule, WindowScheduleError

N_STAT = 20_000
Z = 5.0  # a correct sampler fails one check with probability ~6e-7


def binomial_ok(count: int, n: int, p: float, z: float = Z) -> bool:
    sigma = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= z * sigma


def stochastic(p=0.5, seed=0, anneal=0.0, total=None, short=128, long=2048):
    return WindowSchedule("stochastic", short, long, p, anneal, (), seed, total)


def test_fixed_is_always_long():
    s = WindowSchedule("fixed", long=256, total_steps=100, anneal_fraction=0.1)
    assert set(s.windows_for(range(500))) == {256}
    assert s.max_window == 256


@pytest.mark.parametrize("p,seed", [(0.5, 0), (0.75, 1), (0.1, 12345), (0.5, 2**63 + 7)])
def test_short_fraction_matches_p(p, seed):
    s = stochastic(p=p, seed=seed)
    ws = s.windows_for(range(N_STAT))
    assert set(ws) == {128, 2048}
    n_short = ws.count(128)
    assert binomial_ok(n_short, N_STAT, p), (n_short / N_STAT, p)
    # Consecutive steps are independent: lag-1 correlation of the short indicator ~ N(0, 1/n).
    x = np.array([w == 128 for w in ws], dtype=np.float64)
    r = np.corrcoef(x[:-1], x[1:])[0, 1]
    assert abs(r) < Z / math.sqrt(N_STAT), r


def test_fraction_check_can_fail():
    # The same check must reject a sampler whose p is off by 0.05 (about 14 sigma at n=20k).
    ws = stochastic(p=0.55, seed=3).windows_for(range(N_STAT))
    assert not binomial_ok(ws.count(128), N_STAT, 0.5)
    ws = stochastic(p=0.45, seed=3).windows_for(range(N_STAT))
    assert not binomial_ok(ws.count(128), N_STAT, 0.5)


def test_p_extremes():
    assert set(stochastic(p=0.0).windows_for(range(2000))) == {2048}
    assert set(stochastic(p=1.0).windows_for(range(2000))) == {128}


def test_seeds_give_different_sequences():
    a = stochastic(seed=1).windows_for(range(256))
    b = stochastic(seed=2).windows_for(range(256))
    assert a != b
    assert a == stochastic(seed=1).windows_for(range(256))


@pytest.mark.parametrize("total,frac,start", [(1000, 0.1, 900), (10, 0.3, 7), (7, 0.1, 7),
                                              (100, 1.0, 0), (3, 0.5, 2)])
def test_anneal_start_is_exact(total, frac, start):
    assert stochastic(anneal=frac, total=total).anneal_start == start


def test_anneal_phase_fixed_at_long():
    s = stochastic(p=0.75, anneal=0.1, total=10_000)
    ws = s.windows_for(range(12_000))  # also past total_steps
    assert s.anneal_start == 9000
    assert set(ws[9000:]) == {2048}
    before = ws[:9000]
    assert binomial_ok(before.count(128), 9000, 0.75)
    # Before the anneal phase the draws are exactly those of the schedule without annealing.
    assert before == stochastic(p=0.75).windows_for(range(9000))


def test_list_kind_cycles_without_anneal():
    s = WindowSchedule("list", windows=[32, 32, 128], long=2048, anneal_fraction=0.2, total_steps=20)
    assert s.windows_for(range(25)) == ([32, 32, 128] * 9)[:25]
    assert s.anneal_start is None and s.max_window == 128
    plain = WindowSchedule("list", windows=[64, 16])
    assert plain.windows_for(range(5)) == [64, 16, 64, 16, 64]
    assert plain.max_window == 64


def test_unused_fields_are_ignored():
    # A recipe may switch kind without clearing the other kinds' fields (the schema's defaults).
    s = WindowSchedule("fixed", short=128, long=64, p_short=0.5, anneal_fraction=0.1, windows=[8])
    assert set(s.windows_for(range(50))) == {64}
    s = WindowSchedule("stochastic", 8, 64, 0.5, 0.0, (1, 2), 0, None)
    assert set(s.windows_for(range(200))) == {8, 64}


def test_resumed_sequence_identical():
    full = stochastic(p=0.5, seed=99, anneal=0.1, total=4000)
    straight = full.windows_for(range(4000))
    # A "restart": a new object from the checkpointed state, queried from the resume step on,
    # in any order.
    resumed = WindowSchedule.from_state_dict(json.loads(json.dumps(full.state_dict())))
    assert resumed == full
    assert resumed.windows_for(range(1700, 4000)) == straight[1700:]
    assert [resumed.window(s) for s in reversed(range(1700))] == straight[:1700][::-1]


def test_independent_of_global_rng_state():
    s = stochastic(seed=5)
    ref = s.windows_for(range(1000))
    for k in range(3):
        random.seed(k)
        np.random.seed(k)
        torch.manual_seed(k)
        assert s.windows_for(range(1000)) == ref
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    before = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    s.windows_for(range(1000))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == before


_CHILD = """
import json, random, sys
random.seed({rank})
from swax_megatron.training.window_schedule import WindowSchedule
s = WindowSchedule("stochastic", 128, 2048, 0.5, 0.1, (), 77, 3000)
print(json.dumps(s.windows_for(range(3000))))
"""


def test_same_draws_in_separate_processes():
    ref = stochastic(p=0.5, seed=77, anneal=0.1, total=3000).windows_for(range(3000))
    for rank, hashseed in [(0, "0"), (1, "12345")]:
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        out = subprocess.run([sys.executable, "-c", _CHILD.format(rank=rank)], env=env,
                             capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(out.stdout) == ref


def _rank_body(rank):
    # Each rank disturbs its global RNGs differently, then draws; the ranks compare by all_gather.
    random.seed(rank)
    torch.manual_seed(rank)
    np.random.seed(rank)
    s = WindowSchedule.from_config(
        {"kind": "stochastic", "short": 32, "long": 128, "p_short": 0.5, "anneal_fraction": 0.1},
        seed=2024, total_steps=500)
    mine = torch.tensor(s.windows_for(range(500)))
    gathered = [torch.empty_like(mine) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, mine)
    return [g.tolist() for g in gathered]


def test_same_draws_on_every_rank():
    from dist import run_distributed

    results = run_distributed(_rank_body, 2, timeout=60)
    seqs = results[0]
    assert seqs[0] == seqs[1]
    assert set(seqs[0][:450]) == {32, 128} and set(seqs[0][450:]) == {128}


def test_from_config_object_and_mapping():
    section = SimpleNamespace(kind="stochastic", short=32, long=128, p_short=0.75,
                              anneal_fraction=0.1, windows=None)
    a = WindowSchedule.from_config(section, seed=3, total_steps=100)
    b = WindowSchedule.from_config(vars(section), seed=3, total_steps=100)
    assert a == b and a.anneal_start == 90
    assert a.windows_for(range(100)) == b.windows_for(range(100))
    assert "stochastic 32" in a.describe() and "step 90" in a.describe()


@pytest.mark.parametrize("kwargs,message", [
    (dict(kind="sliding"), "kind must be one of"),
    (dict(kind="fixed"), "long must be a positive integer"),
    (dict(kind="fixed", long=0), "long must be a positive integer"),
    (dict(kind="fixed", long=128.0), "long must be a positive integer"),
    (dict(kind="stochastic", long=128, p_short=0.5), "short must be a positive integer"),
    (dict(kind="stochastic", short=256, long=128, p_short=0.5), "must not exceed long"),
    (dict(kind="stochastic", short=32, long=128, p_short=1.5), "p_short must be a number in [0, 1]"),
    (dict(kind="stochastic", short=32, long=128, p_short=-0.1), "p_short must be"),
    (dict(kind="stochastic", short=32, long=128, p_short=0.5, anneal_fraction=0.1),
     "anneal_fraction > 0 needs total_steps"),
    (dict(kind="stochastic", short=32, long=128, anneal_fraction=2.0, total_steps=10),
     "anneal_fraction must be a number in [0, 1]"),
    (dict(kind="stochastic", short=32, long=128, total_steps=0), "total_steps must be a positive"),
    (dict(kind="list"), "needs a non-empty windows list"),
    (dict(kind="list", windows=[32, -1]), "windows[1] must be a positive integer"),
    (dict(kind="fixed", long=64, seed="1"), "seed must be an integer"),
])
def test_invalid_parameters_rejected(kwargs, message):
    with pytest.raises(WindowScheduleError, match="window_schedule: ") as err:
        WindowSchedule(**kwargs)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_invalid_step_rejected():
    with pytest.raises(WindowScheduleError, match="step must be a non-negative integer"):
        stochastic().window(-1)
    with pytest.raises(WindowScheduleError, match="got 1.0"):
        stochastic().window(1.0)
    assert stochastic(seed=4).window(np.int64(17)) == stochastic(seed=4).window(17)
