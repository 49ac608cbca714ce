"""LR schedule: megatron's OptimizerParamScheduler (warmup, cosine, WSD, constant) read at
num_steps = step + 1; over a real optimizer's param groups; its state resumes bitwise."""

import math

import pytest

from swax_megatron.training.lr_schedule import (LRSchedule, LRScheduleError, current_lr,
                                                load_scheduler_state, lr_at, scheduler)


def test_linear_warmup_reaches_peak_at_last_warmup_step():
    s = LRSchedule(lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=20)
    assert [lr_at(i, s) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(0, s) > 0  # no wasted zero-LR step


def test_cosine_endpoints_midpoint_and_monotone_decay():
    s = LRSchedule(lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110, kind="cosine")
    assert lr_at(9, s) == 1.0 and lr_at(10, s) < 1.0  # peak at the last warmup step
    assert lr_at(59, s) == pytest.approx(0.55, abs=1e-12)  # halfway: (lr + min_lr) / 2
    assert lr_at(109, s) == 0.1  # the last step trains at min_lr
    values = [lr_at(i, s) for i in range(9, 110)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert lr_at(500, s) == 0.1  # past the end: stays at min_lr


def test_cosine_formula_at_an_arbitrary_step():
    s = LRSchedule(lr=3e-3, min_lr=3e-4, warmup_steps=20, total_steps=200, kind="cosine")
    p = (77 + 1 - 20) / 180
    assert lr_at(77, s) == pytest.approx(3e-4 + 2.7e-3 * 0.5 * (1 + math.cos(math.pi * p)),
                                         rel=1e-15)


def test_wsd_is_flat_then_linear_to_min():
    s = LRSchedule(lr=2.0, min_lr=0.0, warmup_steps=5, total_steps=100, kind="wsd",
                   decay_fraction=0.2)
    assert s.decay_start == 80
    assert all(lr_at(i, s) == 2.0 for i in range(4, 80))
    assert lr_at(80, s) == pytest.approx(1.9)  # linear over the last 20 steps
    assert lr_at(89, s) == pytest.approx(1.0)
    assert lr_at(99, s) == 0.0
    assert lr_at(120, s) == 0.0


def test_wsd_decay_never_starts_inside_warmup():
    s = LRSchedule(lr=1.0, min_lr=0.0, warmup_steps=8, total_steps=10, kind="wsd",
                   decay_fraction=0.5)
    assert s.decay_start == 8
    assert [lr_at(i, s) for i in range(6, 10)] == [0.875, 1.0, 0.5, 0.0]


def test_constant_and_no_warmup():
    s = LRSchedule(lr=0.5, warmup_steps=0, total_steps=3, kind="constant")
    assert [lr_at(i, s) for i in range(5)] == [0.5] * 5


def test_warmup_over_all_steps():
    s = LRSchedule(lr=1.0, warmup_steps=4, total_steps=4, kind="cosine")  # megatron: warmup < decay
    assert [lr_at(i, s) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]


def _optimizer():
    import torch

    w, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(1))
    # Groups as megatron's optimizer builds them: per-group max/min LR and a decay multiplier.
    return torch.optim.AdamW([
        {"params": [w], "wd_mult": 1.0, "max_lr": 2.0, "min_lr": 0.2},
        {"params": [b], "wd_mult": 0.0, "max_lr": 2.0, "min_lr": 0.2}])


@pytest.mark.parametrize("kind", ["cosine", "wsd", "constant"])
def test_scheduler_sets_the_groups_and_resumes_bitwise(kind):
    s = LRSchedule(lr=2.0, min_lr=0.2, warmup_steps=3, total_steps=12, kind=kind,
                   decay_fraction=0.5)
    opt = _optimizer()
    sched = scheduler(s, opt, 0, weight_decay=0.1)
    straight, saved = [], None
    for step in range(12):
        assert [g["lr"] for g in opt.param_groups] == [lr_at(step, s)] * 2
        assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
        assert current_lr(sched) == lr_at(step, s)
        straight.append(current_lr(sched))
        sched.step(1)
        if step == 4:
            saved = dict(sched.state_dict())  # a checkpoint after step 5 (steps 0..4 done)
    resumed_opt = _optimizer()
    resumed = scheduler(s, resumed_opt, 0, weight_decay=0.1)
    load_scheduler_state(resumed, saved, 5)
    again = []
    for _ in range(5, 12):
        again.append(resumed_opt.param_groups[0]["lr"])
        resumed.step(1)
    assert again == straight[5:]
    assert len(set(straight)) > (1 if kind == "constant" else 5)


def test_scheduler_state_of_another_schedule_is_one_clear_error():
    a = LRSchedule(lr=1.0, warmup_steps=2, total_steps=10)
    b = LRSchedule(lr=1.0, warmup_steps=2, total_steps=20)
    state = scheduler(a, _optimizer(), 3).state_dict()
    with pytest.raises(LRScheduleError, match="the checkpoint's scheduler differs"):
        load_scheduler_state(scheduler(b, _optimizer()), state, 3)
    with pytest.raises(LRScheduleError, match="at num_steps 4, its train state at step 5"):
        load_scheduler_state(scheduler(a, _optimizer()), state, 5)


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


def test_a_checkpoint_without_scheduler_state_continues_by_the_step(tiny_corpus, tmp_path):
    """Checkpoints written before the scheduler's state was saved (no common `lr_scheduler`)
    still resume: with a note, at the recipe's schedule for the checkpoint's step."""
    import json

    import torch

    from forkrun import TINY_RECIPE, find_run_dir, fork_run, tiny_overrides, train_records
    from swax_megatron.config.resolve import resolve
    from swax_megatron.training.checkpoint import MANIFEST, file_digest

    argv = [TINY_RECIPE, *tiny_overrides(tiny_corpus, tmp_path / "runs", every=4)]
    killed = fork_run(argv, 2, tmp_path / "logs0", env={"SWAX_FAULT": "kill@after_save:4"},
                      timeout=180)
    assert killed.codes == [-9, -9], killed.log
    run_dir = find_run_dir(tmp_path / "runs")
    ckpt = run_dir / "checkpoints" / "iter_0000004"
    common = torch.load(ckpt / "common.pt", weights_only=False)
    assert common["lr_scheduler"]["num_steps"] == 5  # steps 0..3 done: step 4's LR next
    del common["lr_scheduler"]  # as the code before the scheduler wrote it
    torch.save(common, ckpt / "common.pt")
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest["files"]["common.pt"] = file_digest(ckpt / "common.pt")
    (ckpt / MANIFEST).write_text(json.dumps(manifest))

    resumed = fork_run(argv, 2, tmp_path / "logs1", timeout=180)
    assert resumed.codes == [0, 0], resumed.log
    assert "holds no LR scheduler state" in resumed.logs[0] and "at step 4" in resumed.logs[0]
    s = LRSchedule.from_recipe(resolve(argv[0], argv[1:]).recipe)
    lrs = [(r["step"], r["lr"]) for r in train_records(run_dir) if r["kind"] == "train"]
    assert lrs == [(i, lr_at(i - 1, s)) for i in range(1, 9)]
    assert len(set(lr for _, lr in lrs)) == 8
