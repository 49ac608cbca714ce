"""LR schedule: warmup, cosine, WSD, constant, as a pure function of the step."""

import math

import pytest

from swax_megatron.training.lr_schedule import LRSchedule, LRScheduleError, lr_at


def test_linear_warmup_reaches_peak_at_last_warmup_step():
    s = LRSchedule(lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=20)
    assert [lr_at(i, s) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(0, s) > 0  # no wasted zero-LR step


def test_cosine_endpoints_midpoint_and_monotone_decay():
    s = LRSchedule(lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110, kind="cosine")
    assert lr_at(10, s) == 1.0
    assert lr_at(60, s) == pytest.approx(0.55, abs=1e-12)  # halfway: (lr + min_lr) / 2
    assert lr_at(110, s) == pytest.approx(0.1, abs=1e-12)
    values = [lr_at(i, s) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_at(500, s) == pytest.approx(0.1)  # past the end: stays at min_lr


def test_cosine_formula_at_an_arbitrary_step():
    s = LRSchedule(lr=3e-3, min_lr=3e-4, warmup_steps=20, total_steps=200, kind="cosine")
    p = (77 - 20) / 180
    assert lr_at(77, s) == pytest.approx(3e-4 + 2.7e-3 * 0.5 * (1 + math.cos(math.pi * p)),
                                         rel=1e-15)


def test_wsd_is_flat_then_linear_to_min():
    s = LRSchedule(lr=2.0, min_lr=0.0, warmup_steps=5, total_steps=100, kind="wsd",
                   decay_fraction=0.2)
    assert s.decay_start == 80
    assert all(lr_at(i, s) == 2.0 for i in range(5, 81))
    assert lr_at(90, s) == pytest.approx(1.0)
    assert lr_at(100, s) == 0.0
    assert lr_at(120, s) == 0.0


def test_wsd_decay_never_starts_inside_warmup():
    s = LRSchedule(lr=1.0, min_lr=0.0, warmup_steps=8, total_steps=10, kind="wsd",
                   decay_fraction=0.5)
    assert s.decay_start == 8
    assert lr_at(7, s) == 1.0


def test_constant_and_no_warmup():
    s = LRSchedule(lr=0.5, warmup_steps=0, total_steps=3, kind="constant")
    assert [lr_at(i, s) for i in range(5)] == [0.5] * 5


def test_from_recipe_matches_fields():
    from swax_megatron.config.resolve import resolve

    r = resolve("recipes/tiny/swax.yaml").recipe
    s = LRSchedule.from_recipe(r)
    assert (s.lr, s.min_lr, s.warmup_steps, s.total_steps, s.kind) == (
        r.optim.lr, r.optim.min_lr, r.optim.warmup_steps, r.train.steps, r.optim.schedule)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=0.0), "lr must be a positive number"),
    (dict(lr=1.0, min_lr=2.0), "min_lr must be in"),
    (dict(lr=1.0, total_steps=0), "total_steps must be a positive integer"),
    (dict(lr=1.0, total_steps=5, warmup_steps=6), "warmup_steps must be an integer in"),
    (dict(lr=1.0, kind="linear"), "kind must be one of"),
    (dict(lr=1.0, decay_fraction=1.5), "decay_fraction must be in"),
])
def test_bad_parameters_raise_one_clear_error(kwargs, message):
    with pytest.raises(LRScheduleError, match=message):
        LRSchedule(**kwargs)


def test_bad_step():
    s = LRSchedule(lr=1.0, total_steps=2)
    for bad in (-1, 1.5, True):
        with pytest.raises(LRScheduleError, match="step must be a non-negative integer"):
            lr_at(bad, s)
