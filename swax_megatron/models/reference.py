"""SWAX in plain PyTorch: the numerical oracle for SwaxModel (and later the Hugging Face export).

One readable file, no megatron. Same math as swax_megatron.models.SwaxModel, and the parameter
names are the megatron model's state-dict keys at TP=1 / PP=1, so

    ref = SwaxReference(ReferenceConfig.from_swax_config(megatron_model.config))
    ref.load_state_dict(reference_state_dict_from_megatron(megatron_model.state_dict()))

gives the same logits. Layouts that megatron fuses are kept fused, as megatron has them:
  - attention `linear_qkv` rows are grouped per kv head: [q heads of group g, k_g, v_g] per group;
  - mLSTM `linear_qkvo` rows are grouped per head: [q (dqk), k (dqk), v (dv), o (dv)], and
    `linear_gates` rows: [i, f] per head;
  - MLP `linear_fc1` rows are [gate; up] (SwiGLU: silu(gate) * up).
The mLSTM here is the stabilised parallel (quadratic) form, written out: independent of the
chunkwise kernels the megatron model runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.pattern import expand
from ..config.schema import MLSTMConfig, SwaConfig


@dataclass
class ReferenceConfig:
    vocab_size: int
    hidden_size: int
    layer_symbols: str  # expanded pattern: one of S, G, X per layer
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    ffn_hidden_size: int
    swa: SwaConfig = field(default_factory=SwaConfig)  # the recipe's own settings, carried whole
    mlstm: MLSTMConfig = field(default_factory=MLSTMConfig)
    normalization: str = "RMSNorm"
    norm_epsilon: float = 1e-6
    rope_base: float = 10000.0
    add_qkv_bias: bool = False
    tie_embeddings: bool = False
    output_logit_soft_cap: Optional[float] = 30.0

    @property
    def num_layers(self) -> int:
        return len(self.layer_symbols)

    @classmethod
    def from_swax_config(cls, c) -> "ReferenceConfig":
        """From a megatron SwaxConfig (read by attribute, so this module never imports megatron)."""
        return cls(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size, layer_symbols=c.layer_symbols,
            num_attention_heads=c.num_attention_heads, num_query_groups=c.num_query_groups,
            kv_channels=c.kv_channels, ffn_hidden_size=c.ffn_hidden_size, swa=c.swa,
            mlstm=c.mlstm, normalization=c.normalization, norm_epsilon=c.layernorm_epsilon,
            rope_base=c.rotary_base, add_qkv_bias=c.add_qkv_bias,
            tie_embeddings=c.share_embeddings_and_output_weights,
            output_logit_soft_cap=c.output_logit_soft_cap)

    @classmethod
    def from_model_config(cls, m, vocab_size: Optional[int] = None) -> "ReferenceConfig":
        """From a resolved recipe's ModelConfig (config.resolve fills ffn and kv heads); the
        vocabulary padded to 128 as the megatron model pads it."""
        vocab = m.vocab_size if m.vocab_size is not None else vocab_size
        if vocab is None:
            raise ValueError("vocab size unknown: set model.vocab_size or pass vocab_size=")
        return cls(
            vocab_size=-(-vocab // 128) * 128, hidden_size=m.hidden_size,
            layer_symbols=expand(m.layer_pattern), num_attention_heads=m.num_attention_heads,
            num_query_groups=m.num_query_groups, kv_channels=m.hidden_size // m.num_attention_heads,
            ffn_hidden_size=m.ffn_hidden_size, swa=m.swa, mlstm=m.mlstm,
            normalization=m.normalization, norm_epsilon=m.norm_epsilon, rope_base=m.rope_base,
            add_qkv_bias=m.add_qkv_bias, tie_embeddings=m.tie_embeddings,
            output_logit_soft_cap=m.output_logit_soft_cap)


def soft_cap(x, cap):
    return x if cap is None else cap * torch.tanh(x / cap)


def make_norm(cfg: ReferenceConfig) -> nn.Module:
    if cfg.normalization == "RMSNorm":
        return nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_epsilon)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_epsilon)


def rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding over the full head dim, halves rotated (not interleaved). x [B, S, H, D]."""
    S, D = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float32, device=x.device) / D))
    freqs = torch.outer(torch.arange(S, dtype=torch.float32, device=x.device), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)[None, :, None, :]  # [1, S, 1, D]
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * emb.cos().to(x.dtype) + rotated * emb.sin().to(x.dtype)


class Attention(nn.Module):
    """Causal softmax attention with RoPE and GQA; `window` keys back, the query included."""

    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.cfg = cfg
        H, G, D = cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
        self.linear_qkv = nn.Linear(cfg.hidden_size, (H + 2 * G) * D, bias=cfg.add_qkv_bias)
        self.linear_proj = nn.Linear(H * D, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, window: Optional[int]) -> torch.Tensor:
        B, S, _ = x.shape
        H, G, D = self.cfg.num_attention_heads, self.cfg.num_query_groups, self.cfg.kv_channels
        qkv = self.linear_qkv(x).view(B, S, G, H // G + 2, D)
        q = qkv[:, :, :, : H // G].reshape(B, S, H, D)
        k, v = qkv[:, :, :, H // G], qkv[:, :, :, H // G + 1]  # [B, S, G, D]
        q, k = rope(q, self.cfg.rope_base), rope(k, self.cfg.rope_base)
        k, v = k.repeat_interleave(H // G, dim=2), v.repeat_interleave(H // G, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        i = torch.arange(S, device=x.device)[:, None]
        j = torch.arange(S, device=x.device)[None, :]
        allowed = j <= i
        if window is not None:
            allowed = allowed & (i - j < window)
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
        return self.linear_proj(out.transpose(1, 2).reshape(B, S, H * D))


def mlstm_parallel(q, k, v, i, f, eps: float = 1e-6) -> torch.Tensor:
    """Stabilised parallel mLSTM (xLSTM paper, appendix: the parallel form with the max
    stabiliser). q, k [B,H,S,Dqk]; v [B,H,S,Dv];
    i, f gate pre-activations [B,H,S]. Exponential input gate, sigmoid forget gate."""
    S = q.shape[2]
    logf = F.logsigmoid(f)
    # Fmat[t, j] = sum_{r=j+1..t} log f_r: cumulative sum down t of log f_t kept where t > j
    # (a segment sum, no cancellation between long prefix sums)
    below = torch.ones(S, S, dtype=torch.bool, device=q.device).tril(-1)
    rows = logf[..., :, None].expand(*logf.shape, S)  # [.., t, j] = log f_t
    Fmat = torch.where(below, rows, torch.zeros_like(rows)).cumsum(-2)
    causal = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
    logD = torch.where(causal, Fmat + i[..., None, :], torch.full_like(Fmat, float("-inf")))
    m = logD.amax(-1, keepdim=True)  # [B,H,S,1]
    Smat = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 * torch.exp(logD - m)
    b = Smat.sum(-1, keepdim=True)
    return (Smat @ v) / (torch.maximum(b.abs(), torch.exp(-m)) + eps)


class HeadwiseLayerNorm(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.weight = nn.Parameter(torch.ones(num_heads * head_dim))

    def forward(self, x):  # [..., heads, dv]
        xf = x.float()
        var = xf.var(-1, unbiased=False, keepdim=True)
        y = (xf - xf.mean(-1, keepdim=True)) * torch.rsqrt(var + self.eps)
        return (y * self.weight.float().view(self.num_heads, self.head_dim)).to(x.dtype)


class MLSTM(nn.Module):
    """The mLSTM layer of the xLSTM-7B block (gates from the block input, soft-capped)."""

    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.cfg = cfg
        NH, (dqk, dv) = cfg.mlstm.num_heads, cfg.mlstm.head_dims(cfg.hidden_size)
        self.split = [dqk, dqk, dv, dv]  # per head: q, k, v, o
        self.linear_qkvo = nn.Linear(cfg.hidden_size, NH * sum(self.split), bias=False)
        self.linear_gates = nn.Linear(cfg.hidden_size, NH * 2, bias=False)  # per head: i, f
        self.igate_bias = nn.Parameter(torch.full((NH,), float(cfg.mlstm.igate_bias_init)))
        self.fgate_bias = nn.Parameter(torch.linspace(*map(float, cfg.mlstm.fgate_bias_init), NH))
        self.out_norm = HeadwiseLayerNorm(NH, dv, cfg.mlstm.norm_epsilon)
        self.linear_proj = nn.Linear(NH * dv, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, _ = x.shape
        NH, cap = self.cfg.mlstm.num_heads, self.cfg.mlstm.gate_soft_cap
        q, k, v, o = self.linear_qkvo(x).view(B, S, NH, -1).split(self.split, dim=-1)
        i, f = self.linear_gates(x).view(B, S, NH, 2).unbind(-1)
        i = soft_cap(i + self.igate_bias, cap).transpose(1, 2)  # [B, NH, S]
        f = soft_cap(f + self.fgate_bias, cap).transpose(1, 2)
        cell_dtype = torch.promote_types(x.dtype, torch.float32)  # the cell runs in fp32 at least
        h = mlstm_parallel(*(t.transpose(1, 2).to(cell_dtype) for t in (q, k, v)),
                           i.to(cell_dtype), f.to(cell_dtype),
                           eps=self.cfg.mlstm.cell_epsilon).to(x.dtype)
        h = self.out_norm(h.transpose(1, 2)) * torch.sigmoid(o)  # [B, S, NH, dv]
        return self.linear_proj(h.reshape(B, S, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.linear_fc1 = nn.Linear(cfg.hidden_size, 2 * cfg.ffn_hidden_size, bias=False)
        self.linear_fc2 = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.linear_fc1(x).chunk(2, dim=-1)
        return self.linear_fc2(F.silu(gate) * up)


class Layer(nn.Module):
    def __init__(self, cfg: ReferenceConfig, symbol: str):
        super().__init__()
        self.symbol = symbol
        self.input_layernorm = make_norm(cfg)
        self.mixer = MLSTM(cfg) if symbol == "X" else Attention(cfg)
        self.pre_mlp_layernorm = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, window):
        h = self.input_layernorm(x)
        if self.symbol == "X":
            x = x + self.mixer(h)
        else:  # S: the call's window; G: full causal
            x = x + self.mixer(h, window if self.symbol == "S" else None)
        return x + self.mlp(self.pre_mlp_layernorm(x))


class _Embedding(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)


class _Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.ModuleList(Layer(cfg, s) for s in cfg.layer_symbols)
        self.final_norm = make_norm(cfg)


class SwaxReference(nn.Module):
    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        bad = sorted(set(cfg.layer_symbols) - set("SGX"))
        if bad:
            raise ValueError(f"unknown layer symbol {bad[0]!r} (known: S, G, X)")
        self.cfg = cfg
        self.embedding = _Embedding(cfg)
        self.decoder = _Decoder(cfg)
        if not cfg.tie_embeddings:
            self.output_layer = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None,
                window: Optional[int] = None) -> torch.Tensor:
        """input_ids [B, S] -> logits [B, S, V], or the per-token loss [B, S] with labels.
        window: the S layers' window for this call (None: cfg.swa.window)."""
        window = self.cfg.swa.window if window is None else window
        x = self.embedding.word_embeddings(input_ids)
        for layer in self.decoder.layers:
            x = layer(x, window)
        x = self.decoder.final_norm(x)
        tied = self.cfg.tie_embeddings
        weight = self.embedding.word_embeddings.weight if tied else self.output_layer.weight
        logits = soft_cap(x @ weight.t(), self.cfg.output_logit_soft_cap)
        if labels is None:
            return logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
        return loss.view_as(labels)


def reference_state_dict_from_megatron(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The reference's state dict from a TP=1 / PP=1 SwaxModel state dict: the keys are the same;
    megatron-only entries (`_extra_state`, a tied output layer) are dropped."""
    out = {}
    for k, v in sd.items():
        if k.endswith("_extra_state") or v is None:
            continue
        out[k] = v
    return out


def parameter_breakdown(model: SwaxReference) -> Dict[str, int]:
    """Parameter counts by kind (works on the meta device: nothing is allocated)."""
    kinds = {"embeddings": 0, "attention": 0, "mlstm": 0, "mlp": 0, "norms": 0}
    for name, p in model.named_parameters():
        if name.startswith(("embedding.", "output_layer.")):
            kind = "embeddings"
        elif ".mlp." in name:
            kind = "mlp"
        elif ".mixer." in name:
            layer = model.decoder.layers[int(name.split(".")[2])]
            kind = "mlstm" if layer.symbol == "X" else "attention"
        else:
            kind = "norms"
        kinds[kind] += p.numel()
    kinds["total"] = sum(kinds.values())
    return kinds
