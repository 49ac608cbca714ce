"""The HF model's math against the swax_megatron.ops references.

Tolerances (max |a - b| / max |b|): float64 1e-10 (the forms differ only in summation order);
float32 1e-4 for the mLSTM cell and 2e-4 for whole-model logits (5 layers of fp32 rounding with
exponential gates; measured about 1e-5).
"""

import pytest
import torch
from hf_testing import ops_forward, rel_err, tiny_config, tiny_model

from swax_megatron.hf import SwaxForCausalLM
from swax_megatron.hf import modeling_swax as ms
from swax_megatron.ops.mlstm import mlstm_chunkwise as ops_mlstm_chunkwise
from swax_megatron.ops.mlstm import mlstm_recurrent, mlstm_step

TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
MODEL_TOL = {torch.float64: 1e-10, torch.float32: 2e-4}


def _cell_inputs(B, NH, S, dqk, dv, dtype, seed=0, i_scale=3.0, f_shift=2.0, state=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = r(B, NH, S, dqk), r(B, NH, S, dqk), r(B, NH, S, dv)
    i, f = i_scale * r(B, NH, S), 3 * r(B, NH, S) + f_shift
    st = (r(B, NH, dqk, dv), r(B, NH, dqk), r(B, NH)) if state else None
    cast = lambda ts: tuple(t.to(dtype) for t in ts)  # noqa: E731
    return cast((q, k, v, i, f)), (cast(st) if st is not None else None)


def _zero(q, v):
    B, NH, _, dqk = q.shape
    return ms.mlstm_zero_state(B, NH, dqk, v.shape[-1], q.dtype, q.device)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("S,chunk", [(1, 4), (13, 4), (16, 16), (37, 8), (20, 64)])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunkwise_equals_the_recurrent_reference(dtype, S, chunk, with_state):
    (q, k, v, i, f), st = _cell_inputs(2, 3, S, 8, 5, dtype, seed=S, state=with_state)
    h, (C, n, m) = ms.mlstm_chunkwise(q, k, v, i, f, st if st else _zero(q, v), chunk)
    h_ref, (C_ref, n_ref, m_ref) = mlstm_recurrent(q, k, v, i, f, initial_state=st)
    assert rel_err(h, h_ref) < TOL[dtype]
    # The state is stored divided by exp(m): compare the unstabilised state, independent of m.
    assert rel_err(C * m.exp()[..., None, None], C_ref * m_ref.exp()[..., None, None]) < TOL[dtype]
    assert rel_err(n * m.exp()[..., None], n_ref * m_ref.exp()[..., None]) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_step_equals_the_ops_step(dtype):
    (q, k, v, i, f), st = _cell_inputs(2, 3, 1, 8, 5, dtype, state=True)
    h, state = ms.mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[..., 0], f[..., 0], st)
    h_ref, state_ref = mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[..., 0], f[..., 0], st)
    assert rel_err(h, h_ref) < TOL[dtype]
    for a, b in zip(state, state_ref):
        assert rel_err(a, b) < TOL[dtype]


@pytest.mark.parametrize("i_scale,f_shift", [(15.0, -15.0), (15.0, 15.0), (0.0, 0.0)])
def test_chunkwise_at_saturated_gates(i_scale, f_shift):
    """Gates at the soft-cap's limits (+-15): forgetting everything or nothing, writing hard."""
    (q, k, v, i, f), _ = _cell_inputs(1, 2, 50, 8, 4, torch.float32, i_scale=i_scale, f_shift=f_shift)
    i, f = i.clamp(-15, 15), f.clamp(-15, 15)
    h, _ = ms.mlstm_chunkwise(q, k, v, i, f, _zero(q, v), 16)
    h_ref, _ = mlstm_recurrent(*(t.double() for t in (q, k, v, i, f)))
    assert rel_err(h, h_ref) < 1e-4


def test_padding_gates_leave_the_state_unchanged_exactly():
    """A padding step (input gate -1e30, forget gate +1e30) passes (C, n, m) through bit for bit, in
    both forms, so a left-padded row starts its first real token from the zero state."""
    (q, k, v, i, f), st = _cell_inputs(2, 2, 6, 8, 4, torch.float32, state=True)
    i = torch.full_like(i, ms._PAD_IGATE)
    f = torch.full_like(f, ms._PAD_FGATE)
    _, after_step = ms.mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[..., 0], f[..., 0], st)
    _, after_chunk = ms.mlstm_chunkwise(q, k, v, i, f, st, 4)
    for a, b, c in zip(after_step, after_chunk, st):
        assert torch.equal(a, c) and torch.equal(b, c)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_model_forward_equals_the_ops_references(dtype):
    model = tiny_model(dtype)
    ids = torch.randint(0, 101, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(model(ids, use_cache=False).logits, ops_forward(model, ids)) < MODEL_TOL[dtype]


@pytest.mark.parametrize("overrides", [
    dict(tie_word_embeddings=True),
    dict(norm_type="layer_norm", attention_bias=True),
    dict(num_key_value_heads=4, output_logit_soft_cap=None, mlstm_gate_soft_cap=None),
    dict(num_key_value_heads=1, sliding_window=1),
    dict(layer_types=["sliding_attention", "sliding_attention"], sliding_window=30),  # window >= sequence
])
def test_model_variants_equal_the_ops_references(overrides):
    """Tied embeddings, LayerNorm, qkv biases, no GQA / MQA, no soft-caps, window 1 and a window
    longer than the sequence, in float64."""
    model = tiny_model(torch.float64, **overrides)
    ids = torch.randint(0, 101, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_err(model(ids, use_cache=False).logits, ops_forward(model, ids)) < 1e-10
    if overrides.get("tie_word_embeddings"):
        assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("block", [1, 3, 7])
def test_blocked_attention_equals_one_block(block):
    """Long prefills attend in query blocks, each against only the keys its window reaches."""
    model = tiny_model(torch.float64)
    ids = torch.randint(0, 101, (2, 29), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = ops_forward(model, ids)
        for layer in model.model.layers:
            if hasattr(layer, "self_attn"):
                layer.self_attn.query_block = block
        assert rel_err(model(ids, use_cache=False).logits, ref) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_mlstm_kernel_equals_the_plain_path(dtype):
    """mlstm_kernel="auto" runs swax_megatron.ops' chunkwise op on CPU (the package is importable
    here); "plain" this file's. A left-padded row through the op equals the row alone."""
    assert ms._fast_mlstm_chunkwise(torch.device("cpu"), 4) is ops_mlstm_chunkwise
    model = tiny_model(dtype)
    ids = torch.randint(1, 101, (2, 23), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :6] = 0
    with torch.no_grad():
        plain = model(ids, attention_mask=mask, use_cache=False).logits
        model.config.mlstm_kernel = "auto"
        fast = model(ids, attention_mask=mask, use_cache=False).logits
        alone = model(ids[:1, 6:], use_cache=False).logits
    assert rel_err(fast, plain) < MODEL_TOL[dtype]
    assert rel_err(fast[:1, 6:], alone) < MODEL_TOL[dtype]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton mLSTM path runs on CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_mlstm_path_on_cuda_equals_the_plain_path(dtype):
    """On CUDA, mlstm_kernel="auto" prefills with the Triton kernel (when triton imports): logits of a
    left-padded batch against the plain path, and cached decoding after the Triton prefill.
    Tolerances: float32 2e-4, bfloat16 5e-2 (bf16 projections around an fp32 cell)."""
    pytest.importorskip("triton")
    tol = {torch.float32: 2e-4, torch.bfloat16: 5e-2}[dtype]
    model = tiny_model(torch.float32, mlstm_chunk_size=16).to("cuda", dtype)
    ids = torch.randint(1, 101, (2, 70), generator=torch.Generator().manual_seed(6)).cuda()
    mask = torch.ones_like(ids)
    mask[0, :9] = 0
    with torch.no_grad():
        plain = model(ids, attention_mask=mask, use_cache=False).logits
        model.config.mlstm_kernel = "auto"
        assert ms._fast_mlstm_chunkwise(ids.device, 16).__name__ == "mlstm_chunkwise_triton"
        fast = model(ids, attention_mask=mask, use_cache=False).logits
        cache = model(ids[:, :50], attention_mask=mask[:, :50], use_cache=True).cache
        steps = [model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache).logits for t in range(50, 70)]
    assert rel_err(fast, plain) < tol
    assert rel_err(torch.cat(steps, 1), plain[:, 50:]) < tol


def test_loss_is_the_shifted_next_token_cross_entropy():
    model = tiny_model(torch.float64)
    ids = torch.randint(0, 101, (2, 11), generator=torch.Generator().manual_seed(4))
    labels = ids.clone()
    labels[0, 3] = -100
    with torch.no_grad():
        out = model(ids, labels=labels, use_cache=False)
    logits, target = out.logits[:, :-1].reshape(-1, 101), labels[:, 1:].reshape(-1)
    ref = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100)
    assert abs(out.loss.item() - ref.item()) < 1e-6 * ref.item()  # transformers' loss runs in float32


def test_gradients_flow_to_every_parameter():
    """The plain path trains (fine-tuning with the HF model): every weight gets a finite gradient."""
    model = tiny_model(torch.float32).train()
    ids = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(5))
    model(ids, labels=ids, use_cache=False).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_fresh_model_gate_biases_follow_the_training_init():
    model = SwaxForCausalLM(tiny_config(mlstm_num_heads=4, mlstm_qk_head_dim=4, mlstm_v_head_dim=8))
    layer = model.model.layers[0].mlstm_layer
    assert torch.equal(layer.igate_preact.bias.data, torch.full((4,), -10.0))
    assert torch.allclose(layer.fgate_preact.bias.data, torch.linspace(3.0, 6.0, 4))
