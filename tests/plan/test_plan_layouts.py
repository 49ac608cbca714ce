"""The layout search of `swax plan` (plan/layouts.py): the rules, the memory arithmetic, the
bubble and throughput, the ranking; and the command line (table, JSON, bad input)."""

import json
import os
import re

import pytest

from swax_megatron.cli import main
from swax_megatron.config.resolve import resolve
from swax_megatron.plan.layouts import (Cluster, evaluate, layout_problem, plan,
                                        train_flops_per_token, window_mix)
from swax_megatron.plan.model import Kernels, Shape, stage_activations, stage_parameters
from swax_megatron.training import flops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
R7 = os.path.join(ROOT, "recipes", "paper", "swax_7b_stochastic.yaml")
R1 = os.path.join(ROOT, "recipes", "paper", "base_1p4b.yaml")
H100 = dict(gpu_memory=80e9, gpu_flops=989e12, mfu=0.4)


@pytest.fixture(scope="module")
def r7():
    return resolve(R7).recipe


def test_every_layout_follows_the_rules(r7):
    shape = Shape.from_recipe(r7)
    layouts = plan(r7, Cluster(gpus=128, **H100))
    seen = {(L.tp, L.pp, L.ulysses) for L in layouts}
    for L in layouts:
        assert L.tp * L.pp * L.ulysses * L.dp == 128
        split = L.tp * L.ulysses
        assert shape.heads % split == shape.groups % L.tp == shape.mlstm_heads % split == 0
        assert L.tp <= 8 and 32 % L.pp == 0
        assert r7.train.global_batch_size == L.microbatches * L.dp * r7.train.micro_batch_size
    # every (tp, pp, ulysses) the rules allow is there, and nothing else
    for tp in (1, 2, 4, 8, 16, 32):
        for pp in (1, 2, 4, 8, 16, 32):
            for u in (1, 2, 4, 8, 16):
                if 128 % (tp * pp * u) == 0:
                    ok = layout_problem(r7, shape, tp, pp, u, Cluster(gpus=128, **H100)) is None
                    assert ((tp, pp, u) in seen) == ok
    assert (4, 1, 1) in seen and (16, 1, 1) not in seen  # 16 > 8 GPUs per node
    # 8 mLSTM heads: tp x ulysses = 16 splits them too finely
    assert "8 mLSTM heads are not divisible by tensor x ulysses = 8 x 2" in \
        layout_problem(r7, shape, 8, 1, 2, Cluster(gpus=128, **H100))


def test_the_rules_quote_what_breaks(r7):
    shape = Shape.from_recipe(r7)
    c = Cluster(gpus=96, **H100)
    assert "train.global_batch_size: 128 is not divisible by micro_batch_size x data parallel = 1 x 96" \
        in layout_problem(r7, shape, 1, 1, 1, c)
    assert "not divisible by tp x pp x ulysses" in layout_problem(r7, shape, 1, 1, 64, c)
    assert "do not split evenly into 3 pipeline stages" in layout_problem(r7, shape, 1, 3, 1, c)


def test_memory_components(r7):
    shape = Shape.from_recipe(r7)
    c = Cluster(gpus=128, **H100)
    L = evaluate(r7, shape, 4, 2, 1, c, Kernels())
    worst = L.memory["stage"]
    params = stage_parameters(shape, 4, 2, worst)["total"]
    assert L.memory["weights"] == params * 2  # bf16
    assert L.memory["gradients"] == params * 4  # megatron's fp32 gradient buffer
    assert L.memory["optimizer"] == pytest.approx(params * 12 / L.dp)  # fp32 master + 2 moments
    # without the distributed optimizer every rank holds all of its stage's optimizer states
    assert L.memory_without_distributed_optimizer == pytest.approx(
        L.memory["total"] + params * 12 * (1 - 1 / L.dp))
    assert L.memory_by_recompute["none"] > L.memory_by_recompute["selective"] \
        > L.memory_by_recompute["full"]
    # 1F1B: the first stage holds pp = 2 microbatches, the last one
    first = evaluate(r7, shape, 4, 2, 1, c, Kernels())
    assert first.bubble == pytest.approx(1 / (first.microbatches + 1))


def test_ulysses_divides_activations_and_replicas_share_the_optimizer(r7):
    shape = Shape.from_recipe(r7)
    c = Cluster(gpus=128, **H100)
    one, two = evaluate(r7, shape, 2, 1, 1, c, Kernels()), evaluate(r7, shape, 2, 1, 2, c, Kernels())
    assert two.memory["weights"] == one.memory["weights"]
    static = one.memory["weights"] + one.memory["gradients"] + one.memory["optimizer"]
    assert two.memory_by_recompute["none"] - static == pytest.approx(
        (one.memory_by_recompute["none"] - static) / 2)
    kw = dict(last=True, act_bytes=2, micro_batch=1, tp=2, sp=True)
    a1 = stage_activations(shape, shape.symbols, ulysses=1, **kw)
    a2 = stage_activations(shape, shape.symbols, ulysses=2, **kw)
    assert a2.stored_per_token == pytest.approx(a1.stored_per_token / 2)
    # dp halves, but the Ulysses ranks hold the same weights: optimizer shards over dp x ulysses
    assert two.dp == one.dp // 2 and two.memory["optimizer"] == pytest.approx(one.memory["optimizer"])


def test_throughput_and_days(r7):
    shape = Shape.from_recipe(r7)
    c = Cluster(gpus=128, **H100)
    L = evaluate(r7, shape, 4, 1, 1, c, Kernels())
    assert L.recompute == "none" and L.bubble == 0
    per_token = sum(train_flops_per_token(shape, 16384, window_mix(r7.train.window_schedule)).values())
    assert L.tokens_per_day == pytest.approx(128 * 989e12 * 0.4 * 86400 / per_token)
    assert L.days == pytest.approx(150e9 / L.tokens_per_day, rel=0.01)
    deeper = evaluate(r7, shape, 4, 4, 1, c, Kernels())
    assert deeper.tokens_per_day == pytest.approx(L.tokens_per_day * (1 - deeper.bubble))


def test_flops_follow_the_window_schedule(r7):
    ws = r7.train.window_schedule  # 128 with p = 0.75 for 90% of training, else 2048
    assert window_mix(ws) == pytest.approx({128: 0.675, 2048: 0.325})
    shape = Shape.from_recipe(r7)
    mixed = train_flops_per_token(shape, 16384, window_mix(ws))
    d = flops.ModelDims.from_model_config(r7.model, shape.vocab)
    at = {w: flops.forward_flops_per_token(d, 16384, w)["S"] * 3 for w in (128, 2048)}
    assert mixed["S"] == pytest.approx(0.675 * at[128] + 0.325 * at[2048])
    assert at[128] < mixed["S"] < at[2048]


def test_global_attention_costs_more_and_needs_more(r7):
    g = resolve(R7, ["model.layer_pattern=G*32"]).recipe
    s = resolve(R7, ["model.layer_pattern=S*32"]).recipe
    per = {name: sum(train_flops_per_token(Shape.from_recipe(x), 16384,
                                           window_mix(x.train.window_schedule)).values())
           for name, x in (("G", g), ("S", s))}
    assert per["G"] > 1.2 * per["S"]  # 16k tokens: the S x S core of 32 layers


def test_layouts_that_fit_come_first_and_small_gpus_need_recompute(r7):
    layouts = plan(r7, Cluster(gpus=128, gpu_memory=24e9, gpu_flops=989e12))
    fits = [L.fits for L in layouts]
    assert fits == sorted(fits, reverse=True) and any(fits) and not all(fits)
    assert any(L.recompute != "none" for L in layouts if L.fits)
    best = plan(r7, Cluster(gpus=128, **H100))[0]
    assert best.fits and best.recompute == "none"


def _swax(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's errors (cliutil.OneLineParser: one line, exit 2)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_table_and_json(capsys):
    code, out, err = _swax(capsys, "plan", R1, "--gpus", "32", "--top", "3")
    assert code == 0 and err == ""
    assert "parameters 1.42B" in out and "TP  PP   U    DP" in out
    assert len([line for line in out.splitlines() if re.match(r"\s+\d+\s+\d+\s+\d+\s+\d+", line)]) == 3
    code, out, _ = _swax(capsys, "plan", R1, "--gpus", "32", "--json", "--top", "0",
                         "--gpu-memory", "141GB", "train.micro_batch_size=2")
    data = json.loads(out)
    assert code == 0 and data["cluster"]["gpu_memory"] == 141e9
    assert data["recipe"]["micro_batch_size"] == 2
    assert len(data["layouts"]) == data["valid_layouts"] > 0
    first = data["layouts"][0]
    assert first["tp"] * first["pp"] * first["ulysses"] * first["dp"] == 32


@pytest.mark.parametrize("argv,message", [
    (["--gpus", "0"], "expected a positive integer"),
    (["--gpus", "32", "--gpu-memory", "80XB"], "expected a memory size like 80GB"),
    (["--gpus", "32", "--mfu", "1.5"], "--mfu must be in (0, 1]"),
    (["--gpus", "32", "--gpu-flops", "-1"], "--gpu-flops must be a finite number > 0"),
    (["--gpus", "32", "optim.lrr=1"], "optim.lrr"),
    (["--gpus", "5"], "no valid layout of paper-1p4b on 5 GPUs: train.global_batch_size: 128 is "
                      "not divisible by micro_batch_size x data parallel = 1 x 5"),
    (["--gpus", "32", "--sweep-index", "0"], "no sweep block"),
])
def test_cli_bad_input_is_one_line(capsys, argv, message):
    code, out, err = _swax(capsys, "plan", R1, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_cli_a_sweep_needs_an_index(capsys):
    sweep = os.path.join(ROOT, "recipes", "paper", "window_sweep_1p4b.yaml")
    code, _, err = _swax(capsys, "plan", sweep, "--gpus", "32")
    assert code == 2 and "sweep block" in err
    code, out, _ = _swax(capsys, "plan", sweep, "--gpus", "32", "--sweep-index", "4", "--top", "1")
    assert code == 0 and "windows 2048 (100%)" in out
