"""The X mixer: the mLSTM layer of the xLSTM-7B block, tensor-parallel over heads.

    x -> linear_qkvo  -> per head [q (dqk), k (dqk), v (dv), o (dv)]
    x -> linear_gates -> per head [i, f]
      -> gates: i + igate_bias, f + fgate_bias, soft-capped  cap * tanh(x / cap)
      -> mLSTM cell (ops.mlstm, chunkwise) -> per-head LayerNorm (out_norm) -> * sigmoid(o)
      -> linear_proj

Both in-projections are column-parallel matrices whose rows are grouped per head, so the TP split
of their rows is a split over heads and each rank holds whole heads (megatron's QKV idiom). The
gates have a projection of their own: 2 rows per head, far from the multiples of 16 that FP8 GEMMs
need, and the exponential input gate would amplify FP8 rounding; the specs fill that slot with
a plain (never FP8) linear layer. Gate biases and the norm weight are per-head parameters owned
here, sharded on the head axis. The cell math is `mlstm_cell` (takes and returns the (C, n, m)
state) for prefill/generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from megatron.core import tensor_parallel
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.utils import (
    ensure_metadata_has_dp_cp_group,
    make_sharded_tensors_for_checkpoint,
    sharded_state_dict_default,
)

from ..ops.mlstm import mlstm_chunkwise
from . import ulysses
from .config import SwaxConfig
from .layer import recompute

State = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def soft_cap(x: torch.Tensor, cap: Optional[float]) -> torch.Tensor:
    return x if cap is None else cap * torch.tanh(x / cap)


def _kernel(name: str, device: torch.device):
    """torch chunkwise on CPU (and when asked); the Triton kernels on CUDA ("auto": if triton
    imports). Imported lazily: importing triton costs seconds and is useless on CPU."""
    if name == "torch" or (name == "auto" and device.type != "cuda"):
        return mlstm_chunkwise
    try:
        from ..ops.mlstm.triton import mlstm_chunkwise_triton
    except ImportError as e:
        if name == "auto":
            return mlstm_chunkwise
        raise ImportError(f"model.mlstm.kernel 'triton' needs triton ({e}); install the 'triton' extra "
                          f"or set model.mlstm.kernel: torch") from None
    return mlstm_chunkwise_triton


def mlstm_cell(q, k, v, i_pre, f_pre, *, gate_soft_cap: Optional[float] = 15.0, chunk_size: int = 64,
               initial_state: Optional[State] = None, eps: float = 1e-6, kernel: str = "auto",
               grad: str = "stopgrad") -> Tuple[torch.Tensor, State]:
    """The mixer's cell: soft-cap the gate pre-activations, run the chunkwise mLSTM.

    q, k [B, H, S, Dqk]; v [B, H, S, Dv]; i_pre, f_pre [B, H, S] (biases already added);
    returns h [B, H, S, Dv] and the final (C, n, m) state (fp32)."""
    fn = _kernel(kernel, q.device)
    i = soft_cap(i_pre, gate_soft_cap)
    f = soft_cap(f_pre, gate_soft_cap)
    return fn(q, k, v, i, f, chunk_size=chunk_size, initial_state=initial_state, eps=eps, grad=grad)


# Left padding in a decoding batch: the input gate shut, the forget gate open, after the soft cap,
# so a padding position leaves (C, n, m) exactly as it is (as the Hugging Face model does).
_PAD_IGATE, _PAD_FGATE = -1e30, 1e30


class MLSTMCache:
    """The (C, n, m) state an X layer keeps between incremental decoding calls: a prefill runs the
    chunkwise cell from it, a one-token call the step op (ops.mlstm.mlstm_step)."""

    def __init__(self):
        self.state: Optional[State] = None

    def run(self, q, k, v, i_pre, f_pre, real: Optional[torch.Tensor], x) -> torch.Tensor:
        """q, k [b, h, s, dqk]; v [b, h, s, dv]; gate pre-activations [b, h, s] (biases added);
        x = config.mlstm. Returns h [b, h, s, dv]; the final state stays here."""
        from ..ops.mlstm import mlstm_step

        i, f = soft_cap(i_pre, x.gate_soft_cap), soft_cap(f_pre, x.gate_soft_cap)
        if real is not None:
            pad = ~real[:, None, :]
            i, f = i.masked_fill(pad, _PAD_IGATE), f.masked_fill(pad, _PAD_FGATE)
        if q.shape[2] == 1 and self.state is not None:
            h, self.state = mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[..., 0], f[..., 0], self.state,
                                       eps=x.cell_epsilon)
            return h[:, :, None]
        h, self.state = _kernel(x.kernel, q.device)(q, k, v, i, f, chunk_size=x.chunk_size,
                                                    initial_state=self.state, eps=x.cell_epsilon, grad=x.grad)
        return h


def _set_head_sharded(param: torch.nn.Parameter) -> None:
    # partition_dim 0 = the head axis; DDP / grad-norm / optimizer read these attributes.
    tensor_parallel.set_tensor_model_parallel_attributes(param, True, 0, 1)


class HeadwiseLayerNorm(torch.nn.Module):
    """LayerNorm over each head's dv channels (weight only, fp32 statistics), xLSTM-7B style.
    Holds the weight of this rank's heads, flattened [heads_local * dv]."""

    def __init__(self, config: SwaxConfig, num_heads: int, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        # Initialised to ones, so this rank's slice of the full weight is ones too.
        self.weight = torch.nn.Parameter(torch.ones(num_heads * head_dim, dtype=config.params_dtype))
        _set_head_sharded(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., heads_local, dv] -> same shape."""
        dtype = x.dtype
        xf = x.float()
        mean = xf.mean(-1, keepdim=True)
        var = (xf - mean).pow(2).mean(-1, keepdim=True)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        y = y * self.weight.float().view(self.num_heads, self.head_dim)
        return y.to(dtype)


@dataclass
class MLSTMMixerSubmodules:
    linear_qkvo: Union[ModuleSpec, type] = IdentityOp  # column parallel, [q k v o] per head
    linear_gates: Union[ModuleSpec, type] = IdentityOp  # column parallel, [i f] per head; no FP8
    out_norm: Union[ModuleSpec, type] = HeadwiseLayerNorm
    linear_proj: Union[ModuleSpec, type] = IdentityOp  # row parallel


class MLSTMMixer(MegatronModule):
    """mLSTM mixer over [s, b, hidden]; returns (out, bias) like megatron's attention."""

    def __init__(self, config: SwaxConfig, submodules: MLSTMMixerSubmodules, layer_number: int = 1,
                 pg_collection: Optional[ProcessGroupCollection] = None):
        super().__init__(config=config)
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        self.pg_collection = pg_collection
        self.tp_group = pg_collection.tp
        self.layer_number = layer_number
        # Context parallelism is Ulysses here: whole sequences for a share of the heads.
        self.ulysses = ulysses.ulysses_group() if config.context_parallel_size > 1 else None
        tp, rank = self.tp_group.size(), self.tp_group.rank()
        self.num_heads = config.mlstm.num_heads
        self.heads_local = self.num_heads // tp
        self.dqk, self.dv = config.mlstm_head_dims
        self.split = [self.dqk, self.dqk, self.dv, self.dv]  # q, k, v, o per head

        def column(spec, rows_per_head, name):
            return build_module(
                spec, config.hidden_size, self.num_heads * rows_per_head, config=config,
                init_method=config.init_method, gather_output=False, bias=False,
                skip_bias_add=False, is_expert=False, tp_comm_buffer_name=name,
                tp_group=self.tp_group)

        self.linear_qkvo = column(submodules.linear_qkvo, sum(self.split), "qkv")
        self.linear_gates = column(submodules.linear_gates, 2, "gates")

        # Full per-head tensors, then this rank's heads: the same values at every TP size.
        sl = slice(rank * self.heads_local, (rank + 1) * self.heads_local)
        igate = torch.full((self.num_heads,), float(config.mlstm.igate_bias_init))
        lo, hi = config.mlstm.fgate_bias_init
        fgate = torch.linspace(float(lo), float(hi), self.num_heads)
        self.igate_bias = torch.nn.Parameter(igate[sl].clone().to(config.params_dtype))
        self.fgate_bias = torch.nn.Parameter(fgate[sl].clone().to(config.params_dtype))
        _set_head_sharded(self.igate_bias)
        _set_head_sharded(self.fgate_bias)

        self.out_norm = build_module(submodules.out_norm, config, self.heads_local, self.dv,
                                     eps=config.mlstm.norm_epsilon)
        self.linear_proj = build_module(
            submodules.linear_proj, self.num_heads * self.dv, config.hidden_size, config=config,
            init_method=config.output_layer_init_method, bias=config.add_bias_linear,
            input_is_parallel=True, skip_bias_add=True, is_expert=False,
            tp_comm_buffer_name="proj", tp_group=self.tp_group)

    def forward(self, hidden_states, attention_mask=None, rotary_pos_emb=None, *,
                initial_state: Optional[State] = None, return_state: bool = False,
                decode_cache: Optional["MLSTMCache"] = None, real: Optional[torch.Tensor] = None,
                **kwargs):
        """hidden_states [s, b, hidden] -> (out [s, b, hidden], bias) [, final (C, n, m)].
        attention_mask / rotary_pos_emb are accepted for a uniform mixer signature and unused.
        decode_cache (incremental decoding): continue from its state and leave the final one there;
        real [b, s] bool marks this call's tokens (False: left padding, which leaves the state as it is)."""
        qkvo, _ = self.linear_qkvo(hidden_states)
        gates, _ = self.linear_gates(hidden_states)
        s, b = qkvo.shape[0], qkvo.shape[1]
        q, k, v, o = torch.split(qkvo.view(s, b, self.heads_local, -1), self.split, dim=-1)
        i, f = gates.view(s, b, self.heads_local, 2).unbind(-1)
        # [s, b, h, d] -> [b, h, s, d];  gates [s, b, h] -> [b, h, s]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))
        i = (i + self.igate_bias).permute(1, 2, 0)
        f = (f + self.fgate_bias).permute(1, 2, 0)
        x = self.config.mlstm

        def cell_h(*qkvif):  # the cell's output h from zero state
            return mlstm_cell(*qkvif, gate_soft_cap=x.gate_soft_cap, chunk_size=x.chunk_size,
                              eps=x.cell_epsilon, kernel=x.kernel, grad=x.grad)[0]

        if self.config.recompute_mlstm_cell and self.training:
            # Selective recomputation (module mlstm_cell): the cell's activations are dropped
            # after forward and recomputed in backward; q, k, v and the gates are kept.
            # The gates go in contiguous: their gradient then reaches the bias sums in the
            # memory order it has without recomputation (bitwise equal bias gradients).
            plain_h = cell_h
            cell_h = lambda q, k, v, i, f: recompute(  # noqa: E731
                self.config, self.tp_group, plain_h, q, k, v, i.contiguous(), f.contiguous())
        if self.ulysses is not None and decode_cache is None:
            if initial_state is not None or return_state:
                raise ValueError("the mLSTM state is not available under Ulysses sequence parallelism")
            h, state = ulysses.mlstm(cell_h, q, k, v, i, f, self.ulysses), None
        elif decode_cache is None and initial_state is None and not return_state:
            h, state = cell_h(q, k, v, i, f), None
        elif decode_cache is None:
            h, state = mlstm_cell(q, k, v, i, f, gate_soft_cap=x.gate_soft_cap,
                                  chunk_size=x.chunk_size, initial_state=initial_state,
                                  eps=x.cell_epsilon, kernel=x.kernel, grad=x.grad)
        else:
            h = decode_cache.run(q, k, v, i, f, real, x)
            state = decode_cache.state
        h = self.out_norm(h.permute(2, 0, 1, 3))  # [s, b, h, dv]
        h = h * torch.sigmoid(o)
        out, bias = self.linear_proj(h.reshape(s, b, self.heads_local * self.dv))
        if return_state:
            return out, bias, state
        return out, bias

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (),
                           metadata: Optional[dict] = None):
        """Per-head parameters sharded on the head axis (dim 0), so checkpoints reshard over TP."""
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        own = {}
        self._save_to_state_dict(own, "", keep_vars=True)
        sharded = make_sharded_tensors_for_checkpoint(
            own, prefix, {"igate_bias": 0, "fgate_bias": 0}, sharded_offsets,
            tp_group=self.tp_group, dp_cp_group=metadata["dp_cp_group"])
        for name, module in self.named_children():
            if name == "out_norm":
                sharded.update(make_sharded_tensors_for_checkpoint(
                    module.state_dict(prefix="", keep_vars=True), f"{prefix}{name}.", {"weight": 0},
                    sharded_offsets, tp_group=self.tp_group, dp_cp_group=metadata["dp_cp_group"]))
            else:
                sharded.update(sharded_state_dict_default(
                    module, f"{prefix}{name}.", sharded_offsets, metadata, tp_group=self.tp_group))
        return sharded
