"""sbatch options from recipes and the parsing of what sinfo reports (no cluster needed)."""

import os

import pytest

from swax_megatron.config.resolve import resolve
from swax_megatron.launch.errors import LaunchError
from swax_megatron.launch.partitions import gpus_in_gres, minutes, parse_sinfo
from swax_megatron.launch.sbatch import (array_spec, check_fits, check_partitions, is_done,
                                         pick_partitions, sbatch_options)

RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "tiny", "swax.yaml")


def slurm_of(*overrides):
    return resolve(RECIPE, list(overrides)).recipe.slurm


@pytest.mark.parametrize("gres,gpus", [
    ("(null)", 0), ("gpu:8", 8), ("gpu:a100:4(S:0-1)", 4), ("gpu:2,nvme:1", 2),
    ("nvme:1,gpu:h100:8(S:0-1),gpu:a100:2", 10), ("gpu:tesla:4(IDX:0-3)", 4), ("mps:100", 0),
])
def test_gpus_in_gres(gres, gpus):
    assert gpus_in_gres(gres) == gpus


@pytest.mark.parametrize("text,value", [
    ("30", 30), ("30:30", 30.5), ("01:30:00", 90), ("2-00", 2880), ("1-02:03", 1563),
    ("1-00:00:30", 1440.5), ("infinite", None), ("UNLIMITED", None),
])
def test_minutes(text, value):
    assert minutes(text) == value


@pytest.mark.parametrize("text", ["", "1h", "1:2:3:4", "-5", "a-01:00"])
def test_minutes_rejects(text):
    with pytest.raises(ValueError):
        minutes(text)


SINFO = """debug*|up|3|64|gpu:a100:8(S:0-1)|2-00:00:00
debug*|up|1|128|gpu:a100:4|2-00:00:00
cpu|up|10|32|(null)|infinite
maint|down|2|16|(null)|1:00:00
"""


def test_parse_sinfo_merges_node_kinds():
    parts = parse_sinfo(SINFO)
    assert sorted(parts) == ["cpu", "debug", "maint"]
    d = parts["debug"]
    assert (d.default, d.available, d.nodes, d.cpus_per_node, d.gpus_per_node, d.max_minutes) == \
        (True, True, 4, 128, 8, 2880)
    assert parts["cpu"].gpus_per_node == 0 and parts["cpu"].max_minutes is None
    assert not parts["maint"].available and not parts["maint"].default


def test_fit_checks_name_the_field_and_the_limit():
    parts = parse_sinfo(SINFO)
    assert [p.name for p in pick_partitions(slurm_of(), parts)] == ["debug"]  # the default one
    check_fits(slurm_of("slurm.gpus_per_node=8", "train.global_batch_size=32",
                        "slurm.cpus_per_task=16"), parts["debug"])
    cases = [
        (("slurm.partition=gpu",), "partition `gpu` does not exist on this cluster"),
        (("slurm.partition=cpus",), "did you mean `cpu`"),
        (("slurm.nodes=5", "train.global_batch_size=40"), "slurm.nodes=5, but partition `debug` has 4 nodes"),
        (("slurm.gpus_per_node=16", "train.global_batch_size=64"),
         "slurm.gpus_per_node=16, but the nodes of partition `debug` have at most 8 GPUs"),
        (("slurm.cpus_per_task=80",), "= 160 CPUs per node, but the nodes of partition `debug` have at most 128"),
        (("slurm.time=3-00:00:00",), "exceeds the time limit of partition `debug` (2880 minutes)"),
        # a list (sbatch takes one): every partition exists, the job fits each, one kind of node
        (("slurm.partition=cpu,nosuch",), "partition `nosuch` does not exist on this cluster"),
        (("slurm.partition=cpu,maint", "slurm.time=02:00:00"),
         "slurm.time=02:00:00 exceeds the time limit of partition `maint` (60 minutes)"),
        (("slurm.partition=debug,cpu",),
         "slurm.partition: `debug` has GPUs and `cpu` has none: a job asks for GPUs or not"),
    ]
    for overrides, message in cases:
        with pytest.raises(LaunchError) as e:
            s = slurm_of(*overrides)
            check_partitions(s, pick_partitions(s, parts), [])
        assert message in str(e.value), (overrides, str(e.value))
        assert "\n" not in str(e.value)
    # a CPU partition: processes per node are bounded by its CPUs only
    check_fits(slurm_of("slurm.partition=cpu", "slurm.gpus_per_node=16", "train.global_batch_size=64",
                        "slurm.cpus_per_task=2"), parts["cpu"])
    notes = []
    s = slurm_of("slurm.partition=cpu,maint")
    assert check_partitions(s, pick_partitions(s, parts), notes) is False  # no GPUs requested
    assert notes == ["partition `maint` is not up: the job will wait until it is",
                     "partitions `cpu`, `maint` have no GPUs: 2 processes per node on CPUs"]


def test_options_follow_the_recipe_and_launcher():
    s = slurm_of("slurm.account=proj", "slurm.partition=cpu", "slurm.extra_args=[--qos=high]")
    assert sbatch_options(s, "tiny-swax", "/o/%x_%j.out", gpus=True) == [
        "--job-name=tiny-swax", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
        "--gpus-per-node=2", "--time=00:30:00", "--partition=cpu", "--account=proj",
        "--signal=B:USR1@300", "--requeue", "--open-mode=append", "--output=/o/%x_%j.out",
        "--qos=high"]
    t = slurm_of("slurm.launcher=torchrun", "slurm.cpus_per_task=4", "slurm.job_name=j",
                 "slurm.signal_seconds=0")
    opts = sbatch_options(t, "tiny-swax", "o", gpus=False)
    assert opts[:4] == ["--job-name=j", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=8"]
    assert not any(o.startswith(("--gpus", "--signal")) for o in opts)


def test_array_spec():
    assert array_spec([0, 1, 2], 2) == "0-2%2"
    assert array_spec([2, 0, 5, 6, 7, 9], None) == "0,2,5-7,9"
    assert array_spec([4], 1) == "4%1"


def test_is_done(tmp_path):
    assert not is_done(str(tmp_path / "missing"))
    (tmp_path / "exit.json").write_text('{"code": 42, "step": 7, "reason": "signal"}')
    assert not is_done(str(tmp_path))
    (tmp_path / "exit.json").write_text('{"code": 0, "step')  # cut short
    assert not is_done(str(tmp_path))
    (tmp_path / "exit.json").write_text('{"code": 0, "step": 9, "reason": "done"}')
    assert is_done(str(tmp_path))
    (tmp_path / "exit.json").unlink()
    (tmp_path / "DONE").write_text("finished\n")
    assert is_done(str(tmp_path))
