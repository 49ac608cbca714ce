"""Generation with SwaxCache through transformers' generate().

The models run in float64, so that greedy decoding cannot flip on a near-tie and logits can be
compared at 1e-10 (max |a - b| / max |b|): cached decoding reorders sums only. generate() hands its
logits out in float32, so those compare at 1e-6.
"""

import pytest
import torch
from hf_testing import rel_err, tiny_model

from swax_megatron.hf import SwaxCache

PROMPT, NEW = 13, 20  # the prompt alone is longer than the window (5)


def _ids(B, S, seed=0):
    return torch.randint(1, 101, (B, S), generator=torch.Generator().manual_seed(seed))


def _argmax_by_full_forwards(model, ids, steps):
    """Greedy decoding the slow way: the whole sequence through the model for every new token."""
    logits = []
    for _ in range(steps):
        last = model(ids, use_cache=False).logits[:, -1]
        logits.append(last)
        ids = torch.cat([ids, last.argmax(-1, keepdim=True)], dim=1)
    return ids, torch.stack(logits, dim=1)


def _greedy(model, ids, steps, **kw):
    return model.generate(ids, max_new_tokens=steps, do_sample=False, return_dict_in_generate=True,
                          output_logits=True, **kw)


@pytest.mark.parametrize("layer_types", [
    None,  # the hybrid of every kind (hf_testing.LAYERS)
    ["mlstm", "mlstm"],
    ["sliding_attention", "sliding_attention"],
])
def test_greedy_generate_equals_argmax_of_full_forwards(layer_types):
    kw = {} if layer_types is None else dict(layer_types=layer_types)
    model = tiny_model(torch.float64, **kw)
    ids = _ids(2, PROMPT)
    with torch.no_grad():
        out = _greedy(model, ids, NEW)
        ref_ids, ref_logits = _argmax_by_full_forwards(model, ids, NEW)
    assert torch.equal(out.sequences, ref_ids)
    # Every step's logits, not only their argmax: a forward that ignored the cache (e.g. reading
    # `past_key_values` while generate() passes `cache=`) would be off here.
    assert rel_err(torch.stack(out.logits, dim=1), ref_logits) < 1e-6
    assert isinstance(out.cache, SwaxCache)
    assert out.cache.get_seq_length() == PROMPT + NEW - 1  # the last token is sampled, never fed


@pytest.mark.parametrize("chunks", [[1] * 23, [9] + [1] * 14, [7, 7, 7, 2], [2, 19, 1, 1]])
def test_cached_forwards_equal_one_full_forward(chunks):
    """Prefill in pieces of any length (longer or shorter than the window and the mLSTM chunk),
    then single steps: the logits of one forward over the whole sequence."""
    model = tiny_model(torch.float64)
    ids = _ids(2, sum(chunks), seed=1)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache, parts, a = None, [], 0
        for n in chunks:
            out = model(ids[:, a:a + n], cache=cache, use_cache=True)
            cache, a = out.cache, a + n
            parts.append(out.logits)
    assert rel_err(torch.cat(parts, dim=1), full) < 1e-10


def test_cache_memory_is_constant_in_generated_length_for_sliding_and_mlstm_layers():
    model = tiny_model(torch.float64)
    ids = _ids(2, PROMPT, seed=2)
    with torch.no_grad():
        short = _greedy(model, ids, 5).cache.state_bytes()
        long = _greedy(model, ids, 45).cache.state_bytes()
    assert long["sliding_attention"] == short["sliding_attention"] > 0
    assert long["mlstm"] == short["mlstm"] > 0
    # full_attention keeps every key: 40 more tokens x (k + v + token index) for the one such layer.
    cfg = model.config
    per_token = 2 * 2 * cfg.num_key_value_heads * cfg.head_dim * 8 + 2 * 8
    assert long["full_attention"] - short["full_attention"] == 40 * per_token
    # The ring holds window - 1 tokens; the mLSTM state C, n, m per head.
    ring = next(layer for layer in _greedy(model, ids, 2).cache.layers if getattr(layer, "is_sliding", False))
    assert ring.keys.shape == (2, cfg.num_key_value_heads, cfg.sliding_window - 1, cfg.head_dim)


def test_left_padded_batch_equals_each_row_alone():
    """Batched generation pads on the left: the padded row must generate what it generates alone
    (padding masked in attention, no mLSTM state update on padding). Padding ids are arbitrary tokens
    here, so only the attention mask can hide them."""
    model = tiny_model(torch.float64)
    short, long = _ids(1, 8, seed=3), _ids(1, PROMPT, seed=4)
    pad = PROMPT - 8
    batch = torch.cat([torch.cat([_ids(1, pad, seed=5), short], dim=1), long])
    mask = torch.ones_like(batch)
    mask[0, :pad] = 0
    with torch.no_grad():
        together = _greedy(model, batch, NEW, attention_mask=mask)
        alone = [_greedy(model, row, NEW) for row in (short, long)]
        # A plain forward with the mask numbers positions from the mask as well.
        padded_logits = model(batch, attention_mask=mask, use_cache=False).logits[0, pad:]
        short_logits = model(short, use_cache=False).logits[0]
    assert torch.equal(together.sequences[0, pad:], alone[0].sequences[0])
    assert torch.equal(together.sequences[1], alone[1].sequences[0])
    for row, solo in enumerate(alone):
        assert rel_err(torch.stack(together.logits, 1)[row], torch.stack(solo.logits, 1)[0]) < 1e-6
    assert rel_err(padded_logits, short_logits) < 1e-10


def test_long_prefill_in_query_blocks_generates_the_same():
    model = tiny_model(torch.float64)
    ids = _ids(2, 40, seed=6)
    with torch.no_grad():
        ref = _greedy(model, ids, 8)
        for layer in model.model.layers:
            if hasattr(layer, "self_attn"):
                layer.self_attn.query_block = 6
        blocked = _greedy(model, ids, 8)
    assert torch.equal(blocked.sequences, ref.sequences)
    assert rel_err(torch.stack(blocked.logits, 1), torch.stack(ref.logits, 1)) < 1e-6


def test_beam_search_with_cache_equals_beam_search_without():
    """Beam search reorders the cache (ring buffers, token counts, mLSTM states) every step."""
    model = tiny_model(torch.float64)
    ids = _ids(2, 9, seed=7)
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=8, num_beams=3, do_sample=False)
        uncached = model.generate(ids, max_new_tokens=8, num_beams=3, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_a_cache_passed_as_past_key_values_is_used():
    """Callers written for transformers 4 pass `past_key_values`; it must not be silently dropped."""
    model = tiny_model(torch.float64)
    ids = _ids(1, 10, seed=8)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits[:, -1]
        cache = model(ids[:, :-1], use_cache=True).cache
        last = model(ids[:, -1:], past_key_values=cache, use_cache=True).logits[:, -1]
    assert rel_err(last, full) < 1e-10


def test_assisted_decoding_is_refused():
    """A recurrent state cannot be rolled back: generate() refuses instead of decoding wrongly."""
    model = tiny_model(torch.float64)
    with pytest.raises(ValueError, match="stateful"):
        model.generate(_ids(1, 6), max_new_tokens=3, assistant_model=tiny_model(torch.float64))
