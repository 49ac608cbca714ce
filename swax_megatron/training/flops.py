"""Analytic FLOPs per token, per layer type, and model FLOPs utilisation (MFU).

A multiply-add counts 2 FLOPs. Training = forward + backward = 3 x forward (the backward does
two matmuls per forward matmul: input and weight gradients); activation recomputation is not
counted (MFU, not hardware FLOPs utilisation). Norms, RoPE, gates, softmax and other elementwise
work are left out: they are O(hidden) per token against O(hidden^2) for the matmuls.

Per token, forward, with h = hidden, s = sequence length:

S / G attention (heads H, kv groups G, head dim d):
    projections   2 h (H d + 2 G d)  +  2 H d h
    core          2 * 2 H d * keys,  keys = mean number of keys a query attends to:
                  window w (G layers: w = s):  keys = [w (w + 1) / 2 + (s - w) w] / s  (w < s)
                                                       (s + 1) / 2                     (w >= s)
                  so the attention cost follows the step's window; masked-out blocks are not
                  counted (what a sliding-window kernel skips).
X mLSTM (heads H, per-head dims dqk, dv, chunk L):
    projections   2 h H (2 dqk + 2 dv + 2)  +  2 H dv h
    cell          H [2 L dqk + 2 L dv + 4 dqk dv]: chunkwise form, intra-chunk q.k and
                  weights.v over the whole chunk (the kernel computes the full L x L block),
                  plus reading (C^T q) and writing (k v^T) the dqk x dv state.
MLP (SwiGLU, width f):  6 h f.
Output layer: 2 h V (V the padded vocabulary); the embedding is a lookup (0).

Peak FLOPs for MFU (dense, no sparsity), per GPU, from the vendor datasheets:
    H100 / H200 SXM  bf16 989 TFLOP/s   fp32 67      A100  bf16 312   fp32 19.5
    H100 PCIe        bf16 756           fp32 51      L40S  bf16 362   fp32 91.6
Unknown devices and CPUs have no peak here: MFU is reported as None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

TRAIN_FACTOR = 3


@dataclass(frozen=True)
class ModelDims:
    hidden: int
    ffn: int
    vocab: int  # padded
    symbols: str  # expanded layer pattern, one symbol per layer
    heads: int
    groups: int
    head_dim: int
    mlstm_heads: int
    dqk: int
    dv: int
    chunk: int

    @classmethod
    def from_config(cls, config) -> "ModelDims":
        """From a SwaxConfig (models.config)."""
        return cls(hidden=config.hidden_size, ffn=config.ffn_hidden_size, vocab=config.vocab_size,
                   symbols=config.layer_symbols, heads=config.num_attention_heads,
                   groups=config.num_query_groups or config.num_attention_heads,
                   head_dim=config.kv_channels, mlstm_heads=config.mlstm.num_heads,
                   dqk=config.mlstm_head_dims[0], dv=config.mlstm_head_dims[1],
                   chunk=config.mlstm.chunk_size)

    @classmethod
    def from_model_config(cls, m, vocab: int) -> "ModelDims":
        """From a resolved recipe's ModelConfig (no megatron, no torch: `swax plan`); `vocab` the
        padded vocabulary."""
        from ..config.pattern import expand

        dqk, dv = m.mlstm.head_dims(m.hidden_size)
        return cls(hidden=m.hidden_size, ffn=m.ffn_hidden_size, vocab=vocab,
                   symbols=expand(m.layer_pattern), heads=m.num_attention_heads,
                   groups=m.num_query_groups or m.num_attention_heads,
                   head_dim=m.hidden_size // m.num_attention_heads, mlstm_heads=m.mlstm.num_heads,
                   dqk=dqk, dv=dv, chunk=m.mlstm.chunk_size)


def mean_keys(seq: int, window: Optional[int]) -> float:
    """Mean number of keys per query under a causal window (None: full causal)."""
    w = seq if window is None or window >= seq else window
    if w >= seq:
        return (seq + 1) / 2
    return (w * (w + 1) / 2 + (seq - w) * w) / seq


def attention_core_flops(d: ModelDims, seq: int, window: Optional[int]) -> float:
    """q.k and p.v of one S/G layer (what selective recomputation of core_attn runs again)."""
    return 4 * d.heads * d.head_dim * mean_keys(seq, window)


def attention_flops(d: ModelDims, seq: int, window: Optional[int]) -> float:
    qd, kvd = d.heads * d.head_dim, d.groups * d.head_dim
    proj = 2 * d.hidden * (qd + 2 * kvd) + 2 * qd * d.hidden
    return proj + attention_core_flops(d, seq, window)


def mlstm_cell_flops(d: ModelDims, seq: int) -> float:
    """The chunkwise cell of one X layer (what selective recomputation of mlstm_cell runs again)."""
    L = min(d.chunk, seq)
    return d.mlstm_heads * (2 * L * d.dqk + 2 * L * d.dv + 4 * d.dqk * d.dv)


def mlstm_flops(d: ModelDims, seq: int) -> float:
    H = d.mlstm_heads
    proj = 2 * d.hidden * H * (2 * d.dqk + 2 * d.dv + 2) + 2 * H * d.dv * d.hidden
    return proj + mlstm_cell_flops(d, seq)


def mlp_flops(d: ModelDims) -> float:
    return 6 * d.hidden * d.ffn


def forward_flops_per_token(d: ModelDims, seq: int, window: Optional[int]) -> Dict[str, float]:
    """Forward FLOPs per token by component, for a step with S-layer window `window`."""
    out = {"S": 0.0, "G": 0.0, "X": 0.0, "mlp": 0.0, "output": 2.0 * d.hidden * d.vocab}
    for sym in d.symbols:
        if sym == "S":
            out["S"] += attention_flops(d, seq, window)
        elif sym == "G":
            out["G"] += attention_flops(d, seq, None)
        elif sym == "X":
            out["X"] += mlstm_flops(d, seq)
        out["mlp"] += mlp_flops(d)
    return out


def train_flops_per_token(d: ModelDims, seq: int, window: Optional[int]) -> float:
    return TRAIN_FACTOR * sum(forward_flops_per_token(d, seq, window).values())


# name fragment (lower case) -> (bf16, fp32) dense peak TFLOP/s
_PEAKS = (
    ("h200", (989.0, 67.0)),
    ("h100 pcie", (756.0, 51.0)),
    ("h100", (989.0, 67.0)),
    ("a100", (312.0, 19.5)),
    ("l40s", (362.0, 91.6)),
)


def peak_flops(device_name: Optional[str], dtype: str) -> Optional[float]:
    """Dense peak FLOP/s of one device for `dtype` ("bf16"/"fp16" or "fp32"); None if unknown."""
    if not device_name:
        return None
    name = device_name.lower()
    for key, (half, single) in _PEAKS:
        if key in name:
            return (single if dtype == "fp32" else half) * 1e12
    return None


def mfu(tokens_per_second: float, flops_per_token: float, n_devices: int,
        device_name: Optional[str], dtype: str) -> Optional[float]:
    peak = peak_flops(device_name, dtype)
    if peak is None or n_devices <= 0:
        return None
    return tokens_per_second * flops_per_token / (peak * n_devices)
