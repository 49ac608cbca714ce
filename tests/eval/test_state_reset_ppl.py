"""tools/state_reset_ppl.py on a real tiny training run (forked swax-train, XS, sequence 128):
the no-reset row passes the tool's check against one plain forward; resetting the mLSTM state
leaves the first period alone and changes what comes after it; bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
TOOL = REPO / "tools" / "state_reset_ppl.py"
sys.path.insert(0, str(TESTS / "training"))

from forkrun import tiny_trained_run  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_trained_run(tmp_path_factory.mktemp("reset_run"))


def _tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def test_reset_rows(run, tmp_path):
    out = tmp_path / "reset.json"
    res = _tool(run, "--every", 64, "--length", 256, "--sequences", 2, "--json", out)
    assert res.returncode == 0, res.stderr[-2000:]
    table = json.loads(out.read_text())
    assert (table["every"], table["length"], table["sequences"]) == (64, 256, 2)
    assert table["edges"] == [0, 64, 128, 256] and table["window"] == 64  # model.swa.window
    loss = table["loss"]
    assert list(loss) == ["no reset", "mLSTM layer 0", "all mLSTM layers"]  # XS: one mLSTM layer
    # the first period never sees a reset (after it, see test_reset_changes_what_follows)
    assert loss["mLSTM layer 0"][0] == pytest.approx(loss["no reset"][0], abs=1e-6)
    assert loss["all mLSTM layers"] == loss["mLSTM layer 0"]
    assert "| no reset |" in res.stdout and "state reset every 64 tokens" in res.stdout


def test_reset_changes_what_follows(run):
    """chunked_losses itself: without resets it is the plain forward; a reset leaves the tokens
    before it alone and changes those after it. Four steps leave the mLSTM's input gates at
    their -10 init, its output under the LayerNorm's epsilon (a reset would change nothing
    measurable), so the gates are opened here (bias 0) to make the state matter."""
    import importlib.util

    import torch

    from swax_megatron.hf.convert import load_for_generation
    from swax_megatron.hf.modeling_swax import SwaxMLSTMLayer

    spec = importlib.util.spec_from_file_location("state_reset_ppl", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model, _ = load_for_generation(run)
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, SwaxMLSTMLayer)]
    assert len(layers) == 1
    with torch.no_grad():
        layers[0].igate_preact.bias.zero_()
        ids = torch.randint(3, model.config.vocab_size, (192,), generator=torch.Generator().manual_seed(0))
        plain = torch.nn.functional.cross_entropy(model(input_ids=ids[None]).logits[0, :-1], ids[1:],
                                                  reduction="none")
    ids = ids.tolist()
    same = tool.chunked_losses(model, ids, 64, [])
    assert torch.allclose(same, plain, atol=tool.AGREE_ATOL, rtol=0)
    mlstm_index = model.config.layer_types.index("mlstm")
    reset = tool.chunked_losses(model, ids, 64, [mlstm_index])
    assert torch.equal(reset[:63], same[:63])  # positions 1..63: before the first reset
    assert (reset[63:] - same[63:]).abs().mean() > 1e-3


def test_bad_input_one_line(run, tmp_path):
    earlier = tmp_path / "earlier.json"
    earlier.write_text("{}")
    for args, says in (((tmp_path,), "not a run directory"),
                       ((run, "--every", 128, "--length", 128), "must exceed the reset period"),
                       ((run, "--json", tmp_path / "no" / "r.json"), "its directory does not exist"),
                       ((run, "--json", earlier), "exists (choose a new path)")):
        res = _tool(*args)
        assert res.returncode == 2, res.stderr[-2000:]
        assert res.stderr.strip().splitlines() == [res.stderr.strip()] and says in res.stderr
    assert earlier.read_text() == "{}"
