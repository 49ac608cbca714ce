"""megatron-core itself on CPU/gloo through the fork harness: a tiny GPTModel (local spec) gives the
same loss and gradients at TP=1, TP=2 and PP=2. Proves cpu_compat and the harness, independent of
any SWAX code."""

import functools
import time

import pytest
import torch

from dist import DistributedTestError, run_distributed

SEQ, MBS, N_MICRO, VOCAB, LAYERS = 16, 2, 2, 128, 2


def _config(tp, pp):
    from megatron.core.transformer import TransformerConfig

    return TransformerConfig(
        num_layers=LAYERS, hidden_size=64, num_attention_heads=4, num_query_groups=2,
        ffn_hidden_size=128, normalization="RMSNorm", gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, add_bias_linear=False,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        pipeline_dtype=torch.float32, use_cpu_initialization=True, params_dtype=torch.float32,
        bias_activation_fusion=False, masked_softmax_fusion=False, gradient_accumulation_fusion=False,
        persist_layer_norm=False, bias_dropout_fusion=False, apply_rope_fusion=False,
        batch_p2p_comm=False, hidden_dropout=0.0, attention_dropout=0.0)


def _batches():
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, VOCAB, (MBS, SEQ + 1), generator=g) for _ in range(N_MICRO)]


def _train_step(rank, tp, pp, full_state):
    """One forward/backward of N_MICRO micro-batches; returns (losses, {param name: grad})."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.pipeline_parallel import get_forward_backward_func

    cfg = _config(tp, pp)
    torch.manual_seed(0)
    model = GPTModel(cfg, get_gpt_layer_local_spec(normalization="RMSNorm"), vocab_size=VOCAB,
                     max_sequence_length=SEQ, position_embedding_type="rope",
                     share_embeddings_and_output_weights=False,
                     pre_process=parallel_state.is_pipeline_first_stage(),
                     post_process=parallel_state.is_pipeline_last_stage())
    if full_state is not None:  # PP: copy this stage's layers out of the single-process model
        offset = parallel_state.get_pipeline_model_parallel_rank() * (LAYERS // pp)
        own = model.state_dict()
        for name in list(own):
            if name.endswith("_extra_state"):
                continue
            src = name
            if name.startswith("decoder.layers."):
                idx, rest = name[len("decoder.layers."):].split(".", 1)
                src = f"decoder.layers.{int(idx) + offset}.{rest}"
            own[name] = full_state[src]
        model.load_state_dict(own)

    def forward_step(data_iter, model):
        batch = next(data_iter)
        tokens, labels = batch[:, :-1], batch[:, 1:]
        pos = torch.arange(SEQ).unsqueeze(0).expand(MBS, -1)
        out = model(tokens, pos, None, labels=labels)

        def loss_func(output):
            loss = output.float().mean()
            return loss, {"loss": loss.detach()}

        return out, loss_func

    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(_batches()), model=[model],
        num_microbatches=N_MICRO, seq_length=SEQ, micro_batch_size=MBS, forward_only=False)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    state = {k: v.clone() for k, v in model.state_dict().items() if v is not None}
    return [d["loss"].item() for d in losses], grads, state


def test_harness_reports_child_traceback():
    def body(rank):
        if rank == 1:
            raise ValueError("boom on rank 1")
        torch.distributed.barrier()

    with pytest.raises(DistributedTestError, match="boom on rank 1"):
        run_distributed(body, 2, timeout=30)


def test_harness_times_out():
    def body(rank):
        if rank == 1:
            time.sleep(60)  # a hung rank
        torch.distributed.barrier()

    with pytest.raises(DistributedTestError, match="timeout"):
        run_distributed(body, 2, timeout=3)


@pytest.fixture(scope="module")
def reference():
    (losses, grads, state), = run_distributed(
        functools.partial(_train_step, tp=1, pp=1, full_state=None), 1, tp=1)
    return losses, grads, state


def test_tp2_matches_single_process(reference):
    ref_losses, ref_grads, _ = reference
    out = run_distributed(functools.partial(_train_step, tp=2, pp=1, full_state=None), 2, tp=2)
    for losses, grads, _ in out:
        assert losses == pytest.approx(ref_losses, abs=1e-5)
    # Row-parallel output projections are sharded on dim 1 and their gradients must concatenate
    # to the single-process gradient.
    name = "decoder.layers.0.self_attention.linear_proj.weight"
    full = torch.cat([grads[name] for _, grads, _ in out], dim=1)
    torch.testing.assert_close(full, ref_grads[name], atol=1e-6, rtol=1e-5)


def test_pp2_matches_single_process(reference):
    ref_losses, ref_grads, ref_state = reference
    out = run_distributed(functools.partial(_train_step, tp=1, pp=2, full_state=ref_state), 2,
                          tp=1, pp=2)
    last_losses = out[1][0]
    assert last_losses == pytest.approx(ref_losses, abs=1e-5)
    for stage, (_, grads, _) in enumerate(out):
        for name, g in grads.items():
            src = name
            if name.startswith("decoder.layers."):
                idx, rest = name[len("decoder.layers."):].split(".", 1)
                src = f"decoder.layers.{int(idx) + stage * (LAYERS // 2)}.{rest}"
            torch.testing.assert_close(g, ref_grads[src], atol=1e-6, rtol=1e-5)
