"""Shared pieces of the SWAX model tests: tiny configs, batches, a pipeline-aware train step, and
turning per-rank shards back into full tensors. Everything here runs inside forked gloo ranks
(tests/dist.py); megatron's parallel_state is initialised by the harness."""

from __future__ import annotations

import zlib

import torch

SEQ, MBS, N_MICRO, VOCAB = 16, 2, 2, 128
# The patterns, each at least 2 layers so PP=2 has a layer per stage.
PATTERNS = ["XS*2", "S*2", "X*2", "G*2", "SG"]


def tiny_config(pattern, tp=1, pp=1, **overrides):
    """A small SwaxConfig; `swa_window=` and `mlstm_<field>=` set fields of its SwaConfig and
    MLSTMConfig (shorthand for the tests), anything else a SwaxConfig field."""
    from swax_megatron.config.pattern import expand
    from swax_megatron.config.schema import MLSTMConfig, SwaConfig
    from swax_megatron.models import SwaxConfig

    # igate bias 0 instead of -10: the mLSTM then contributes O(1) from the first step, so a
    # wrong mLSTM shard or gradient cannot hide below the tolerances. Chunk 8 (several chunks at
    # SEQ) is a torch-kernel size: triton takes powers of two >= 16.
    mlstm = dict(num_heads=2, igate_bias_init=0.0, chunk_size=8, kernel="torch")
    swa = dict(window=5)
    for key in list(overrides):
        if key.startswith("mlstm_"):
            mlstm[key[len("mlstm_"):]] = overrides.pop(key)
        elif key == "swa_window":
            swa["window"] = overrides.pop(key)
    kw = dict(
        num_layers=len(expand(pattern)), hidden_size=64, num_attention_heads=4,
        num_query_groups=2, ffn_hidden_size=96, layer_pattern=pattern, swa=SwaConfig(**swa),
        mlstm=MLSTMConfig(**mlstm), vocab_size=VOCAB, max_sequence_length=SEQ,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        pipeline_dtype=torch.float32, params_dtype=torch.float32, use_cpu_initialization=True,
        batch_p2p_comm=False, init_seed=1234, output_logit_soft_cap=30.0)
    kw.update(overrides)
    return SwaxConfig(**kw)


def build(cfg, pre_process=None, post_process=None):
    from megatron.core import parallel_state
    from swax_megatron.models import SwaxModel, get_swax_block_spec

    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    return SwaxModel(cfg, get_swax_block_spec("local"), pre_process=pre_process,
                     post_process=post_process)


def batches(n=N_MICRO, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (MBS, SEQ + 1), generator=g) for _ in range(n)]


def global_name(model, name: str) -> str:
    """State-dict name with the stage-local layer index replaced by the global one."""
    prefix = "decoder.layers."
    if name.startswith(prefix):
        local, rest = name[len(prefix):].split(".", 1)
        return f"{prefix}{model.decoder.layers[int(local)].layer_number - 1}.{rest}"
    return name


def shard_info(param):
    """(partition_dim, stride) for a TP-sharded parameter, None for a replicated one."""
    if getattr(param, "tensor_model_parallel", False):
        return param.partition_dim, getattr(param, "partition_stride", 1)
    return None


def merge_shards(shards, info):
    """Full tensor from per-TP-rank shards; with stride s each shard holds s interleaved pieces
    (the SwiGLU fc1 holds [gate_r; up_r])."""
    if info is None:
        return shards[0]
    if info == "sum":  # sequence-parallel norm weights: each rank holds a partial gradient
        return sum(shards)
    dim, stride = info
    pieces = [s.chunk(stride, dim=dim) for s in shards]
    return torch.cat([p[j] for j in range(stride) for p in pieces], dim=dim)


def forward_backward(model, data, forward_only=False, ddp=None):
    """megatron's schedule over `data` micro-batches; returns the per-micro-batch mean losses
    (on the last stage; [] elsewhere)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    losses = []  # recorded here: what the schedule reports is scaled by 1 / num_microbatches

    def forward_step(data_iter, m):
        batch = next(data_iter)
        out = m(batch[:, :-1], labels=batch[:, 1:])

        def loss_func(output):
            loss = output.float().mean()
            losses.append(loss.item())
            return loss, {"loss": loss.detach()}

        return out, loss_func

    get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(data), model=[ddp or model],
        num_microbatches=len(data), seq_length=SEQ, micro_batch_size=MBS, forward_only=forward_only)
    return losses


def named_grads(model):
    return {global_name(model, n): (p.grad.detach().clone(),
                                     "sum" if getattr(p, "sequence_parallel", False) else shard_info(p))
            for n, p in model.named_parameters() if p.grad is not None}


def named_params(model):
    return {global_name(model, n): (p.detach().clone(), shard_info(p))
            for n, p in model.named_parameters()}


def perturb_(model, scale=0.02, vector_scale=0.3):
    """Add name-seeded noise to every parameter (different on each TP shard of a sharded one):
    N(0, scale) on matrices, N(0, vector_scale) on vectors (norm weights, gate biases), which are
    ones/constants at init and would hide a misplaced head or a transposed norm."""
    from megatron.core import parallel_state

    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "output_layer.weight" and model.share_embeddings_and_output_weights:
                name = "embedding.word_embeddings.weight"  # the last stage's copy of the tied weight
            key = global_name(model, name) + (f"@tp{tp_rank}" if shard_info(p) else "")
            g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            p.add_(torch.randn(p.shape, generator=g) * (vector_scale if p.dim() == 1 else scale))


def gather_tp_last_dim(t):
    """Concatenate a vocab-parallel [b, s, v/tp] tensor over the TP group."""
    from megatron.core import parallel_state

    group = parallel_state.get_tensor_model_parallel_group()
    if group.size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(group.size())]
    torch.distributed.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


def merge_rank_dicts(per_rank, tp, pp):
    """{name: full tensor} from per-rank {name: (tensor, shard_info)} of a tp x pp run (or of
    tp x dp, reading the first data-parallel replica). megatron's rank order is tp-cp-ep-dp-pp
    (tp fastest, pp slowest): rank = tp_rank + tp * pp_rank when dp = 1."""
    merged = {}
    for stage in range(pp):
        ranks = [stage * tp + t for t in range(tp)]
        names = per_rank[ranks[0]].keys()
        for n in names:
            info = per_rank[ranks[0]][n][1]
            merged[n] = merge_shards([per_rank[r][n][0] for r in ranks], info)
    return merged
