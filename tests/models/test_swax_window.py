"""Window semantics through the whole model: the receptive field of the last token is exactly
layers x (window - 1) + 1 positions for a pure-SWA model, unbounded once an mLSTM layer is in,
unaffected by the window for G layers; set_swa_window takes effect on the next call, and
None restores the configured window."""

import pytest
import torch

from dist import run_distributed
from swax_model_testing import SEQ, VOCAB, build, tiny_config


def _influencing_positions(model, tokens):
    """Positions p where changing token p changes the last position's logits."""
    variants = tokens.repeat(SEQ + 1, 1)
    for p in range(SEQ):
        variants[p + 1, p] = (variants[p + 1, p] + 1) % VOCAB
    with torch.no_grad():
        last = model(variants)[:, -1]
    diff = (last[1:] - last[:1]).abs().amax(-1)
    changed = {p for p in range(SEQ) if diff[p] > 1e-4}
    unchanged = {p for p in range(SEQ) if diff[p] == 0}
    assert changed | unchanged == set(range(SEQ)), f"ambiguous differences {diff.tolist()}"
    return changed


def _window_run(rank):
    tokens = torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(5))
    res = {}
    swa = build(tiny_config("S*2", swa_window=5))
    res["S default"] = (swa.swa_window, _influencing_positions(swa, tokens))
    swa.set_swa_window(3)
    res["S 3"] = (swa.swa_window, _influencing_positions(swa, tokens))
    swa.set_swa_window(7)
    res["S 7"] = (swa.swa_window, _influencing_positions(swa, tokens))
    swa.set_swa_window(None)
    res["S None"] = (swa.swa_window, _influencing_positions(swa, tokens))
    xs = build(tiny_config("XS", swa_window=5))
    xs.set_swa_window(2)
    res["XS 2"] = (xs.swa_window, _influencing_positions(xs, tokens))
    glob = build(tiny_config("G*2", swa_window=5))
    glob.set_swa_window(2)
    res["G 2"] = (glob.swa_window, _influencing_positions(glob, tokens))
    errors = []
    for bad in (0, -3, 2.5, True, "8"):
        try:
            swa.set_swa_window(bad)
        except ValueError as e:
            errors.append(str(e))
    res["errors"] = errors
    return res


@pytest.fixture(scope="module")
def window_results():
    (res,) = run_distributed(_window_run, 1, tp=1)
    return res


def _receptive(layers, window):
    return set(range(max(0, SEQ - 1 - layers * (window - 1)), SEQ))


@pytest.mark.parametrize("case,window", [("S default", 5), ("S 3", 3), ("S 7", 7), ("S None", 5)])
def test_swa_receptive_field_is_layers_times_window(window_results, case, window):
    current, changed = window_results[case]
    assert current == window
    assert changed == _receptive(2, window)


def test_mlstm_carries_tokens_beyond_the_window(window_results):
    _, changed = window_results["XS 2"]
    assert changed == set(range(SEQ))


def test_global_attention_ignores_the_window(window_results):
    _, changed = window_results["G 2"]
    assert changed == set(range(SEQ))


def test_bad_window_values_are_rejected(window_results):
    errors = window_results["errors"]
    assert len(errors) == 5 and all("sliding window must be a positive int" in e for e in errors)
