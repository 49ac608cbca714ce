"""TP=2, PP=2, TP2xPP2 and TP=2 with sequence parallelism give the single-process losses and
gradients (<= 1e-5) for the patterns XS, S, X, G, SG, with GQA (4 query heads, 2 kv heads).
One forked run per layout covers all patterns. No weights are copied between runs: SwaxModel's
init depends only on (seed, config), not on the TP/PP layout (use_cpu_initialization), which
this test also proves."""

import functools

import pytest
import torch

from dist import run_distributed
from swax_model_testing import (PATTERNS, batches, build, forward_backward, merge_rank_dicts,
                                named_grads, named_params, tiny_config)

TOL = dict(atol=1e-5, rtol=1e-5)


def _run(rank, tp, pp, sp=False, patterns=tuple(PATTERNS)):
    out = {}
    for pattern in patterns:
        model = build(tiny_config(pattern, tp=tp, pp=pp, sequence_parallel=sp))
        losses = forward_backward(model, batches())
        out[pattern] = (losses, named_grads(model), named_params(model))
    return out


@pytest.fixture(scope="module")
def single():
    (res,) = run_distributed(functools.partial(_run, tp=1, pp=1), 1, tp=1)
    return {p: (losses, {n: g for n, (g, _) in grads.items()}, {n: w for n, (w, _) in params.items()})
            for p, (losses, grads, params) in res.items()}


def _check(per_rank, pattern, reference, tp, pp):
    ref_losses, ref_grads, ref_params = reference
    assert len(ref_losses) == 2 and all(l > 0 for l in ref_losses)
    last = per_rank[-1][pattern][0]
    assert last == pytest.approx(ref_losses, abs=1e-5), pattern
    params = merge_rank_dicts([r[pattern][2] for r in per_rank], tp, pp)
    grads = merge_rank_dicts([r[pattern][1] for r in per_rank], tp, pp)
    assert set(params) == set(ref_params), pattern
    assert set(grads) == set(ref_grads), pattern
    for name, w in ref_params.items():  # same init at any layout
        torch.testing.assert_close(params[name], w, atol=0, rtol=0, msg=f"{pattern} {name}")
    for name, g in ref_grads.items():
        assert g.abs().max() > 0, f"{pattern} {name}: zero gradient in the reference"
        torch.testing.assert_close(grads[name], g, **TOL, msg=f"{pattern} {name}")


@pytest.mark.parametrize("tp,pp,sp", [(2, 1, False), (1, 2, False), (2, 2, False), (2, 1, True)],
                         ids=["tp2", "pp2", "tp2xpp2", "tp2_sequence_parallel"])
def test_layout_matches_single_process(single, tp, pp, sp):
    per_rank = run_distributed(functools.partial(_run, tp=tp, pp=pp, sp=sp), tp * pp, tp=tp, pp=pp)
    for pattern in PATTERNS:
        _check(per_rank, pattern, single[pattern], tp, pp)


def test_uneven_stages_from_markers(single):
    """'XSX|S' puts three layers on stage 0 and one on stage 1: the same model as XS*2."""
    per_rank = run_distributed(functools.partial(_run, tp=1, pp=2, patterns=("XSX|S",)), 2, tp=1, pp=2)
    layers = [{n.split(".")[2] for n in r["XSX|S"][2] if n.startswith("decoder.layers.")}
              for r in per_rank]
    assert layers == [{"0", "1", "2"}, {"3"}]
    _check(per_rank, "XSX|S", single["XS*2"], 1, 2)
