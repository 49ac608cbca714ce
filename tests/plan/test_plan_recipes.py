"""The paper's recipes at scale: each one's layout is what `swax plan` ranks first for the cluster
its slurm section states (H100 80GB, MFU 0.4), and the 7B baselines stand beside the 7B SWAX."""

import glob
import os

import pytest

from swax_megatron.config.resolve import resolve, resolve_sweep
from swax_megatron.plan.layouts import Cluster, plan

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER = sorted(glob.glob(os.path.join(ROOT, "recipes", "paper", "*.yaml")))
H100 = dict(gpu_memory=80e9, gpu_flops=989e12, mfu=0.4, gpus_per_node=8)


@pytest.mark.parametrize("path", PAPER, ids=os.path.basename)
def test_the_recipe_layout_is_the_planners_first_choice(path):
    for entry in resolve_sweep(path):
        r = entry.recipe
        assert r.slurm.gpus_per_node == 8 and r.world_size >= 32, "a paper recipe states its cluster"
        best = plan(r, Cluster(gpus=r.world_size, **H100))[0]
        p = r.parallel
        assert best.fits
        assert (p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.ulysses_size) \
            == (best.tp, best.pp, best.ulysses), (path, best)
        assert r.train.recompute.granularity == best.recompute
        assert p.sequence_parallel == (best.tp > 1) and p.use_distributed_optimizer


@pytest.mark.parametrize("name,pattern", [("swa_7b", "S*32"), ("xlstm_7b", "X*32"),
                                          ("transformer_7b", "G*32")])
def test_the_7b_baselines(name, pattern):
    path = os.path.join(ROOT, "recipes", "paper", f"{name}.yaml")
    swax = resolve(os.path.join(ROOT, "recipes", "paper", "swax_7b_stochastic.yaml")).recipe
    for entry in resolve_sweep(path):
        r = entry.recipe
        assert r.model.layer_pattern == pattern
        assert (r.model.num_layers, r.model.hidden_size) == (32, 4096)
        # everything but the mixers and the window schedule is the 7B SWAX run's
        assert (r.train.seq_length, r.train.global_batch_size, r.train.steps) == \
            (swax.train.seq_length, swax.train.global_batch_size, swax.train.steps)
        assert r.optim == swax.optim and r.parallel == swax.parallel and r.slurm == swax.slurm
