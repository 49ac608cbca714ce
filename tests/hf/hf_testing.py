"""Shared helpers for the Hugging Face tests (imported by module name: pytest puts this folder on sys.path).

`tiny_config` builds small SWAX configs; `ops_forward` recomputes a SwaxForCausalLM's logits from its
weights with the swax_megatron.ops references (masked sliding-window attention, the recurrent mLSTM
step loop) and an independently written RoPE / norm / MLP, so the HF model is checked against the ops
and not against itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch
import torch.nn.functional as F

from swax_megatron.hf import SwaxForCausalLM, SwaxHFConfig
from swax_megatron.ops.mlstm import mlstm_recurrent
from swax_megatron.ops.swa import sliding_window_attention_masked

# Every layer kind, a window shorter than the prompts, GQA, an odd chunk size.
LAYERS = ["mlstm", "sliding_attention", "full_attention", "mlstm", "sliding_attention"]


def tiny_config(**overrides) -> SwaxHFConfig:
    kw = dict(vocab_size=101, hidden_size=32, intermediate_size=48, layer_types=LAYERS, num_attention_heads=4,
              num_key_value_heads=2, sliding_window=5, mlstm_num_heads=2, mlstm_qk_head_dim=8, mlstm_v_head_dim=16,
              mlstm_chunk_size=4, mlstm_kernel="plain", rope_theta=500.0, pad_token_id=0, eos_token_id=None)
    kw.update(overrides)
    return SwaxHFConfig(**kw)


def tiny_model(dtype=torch.float32, seed=0, gate_spread=1.0, **overrides) -> SwaxForCausalLM:
    """A model with random weights, gate biases spread so that the mLSTM gates are neither all closed
    (the init's input bias -10 would write almost nothing) nor all saturated."""
    torch.manual_seed(seed)
    model = SwaxForCausalLM(tiny_config(**overrides)).to(dtype).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate_preact.bias"):
                p.copy_(gate_spread * 3 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype))
            elif p.dim() == 2:  # larger than the 0.02 init, so that every path moves the logits
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype) * p.shape[1] ** -0.5)
            else:  # norm weights away from 1
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype))
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (b is the reference)."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def _rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE written as complex rotation of the pairs (x[j], x[j + D/2]) by angle pos * theta^(-2j/D).
    x [B, H, S, D]; positions 0..S-1."""
    S, D = x.shape[2], x.shape[3]
    ad = torch.float64 if x.dtype == torch.float64 else torch.float32
    freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D)
    angle = torch.arange(S, dtype=ad)[:, None] * freq.to(ad)[None, :]
    rot = torch.polar(torch.ones_like(angle), angle).to(torch.complex128)
    z = torch.complex(x[..., : D // 2].double(), x[..., D // 2:].double()) * rot
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def _norm(cfg, module, x):
    if cfg.norm_type == "rms_norm":
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * module.weight
    return F.layer_norm(x, x.shape[-1:], module.weight, module.bias, cfg.norm_eps)


def ops_forward(model: SwaxForCausalLM, input_ids: torch.Tensor, window=None) -> torch.Tensor:
    """Logits [B, S, V] of `model` on unpadded input_ids, built from the ops references."""
    cfg = model.config
    window = cfg.sliding_window if window is None else window
    cap = lambda x, c: x if c is None else c * torch.tanh(x / c)  # noqa: E731
    x = model.model.embed_tokens.weight[input_ids]
    B, S, _ = x.shape
    for layer, kind in zip(model.model.layers, cfg.layer_types):
        h = _norm(cfg, layer.input_layernorm, x)
        if kind == "mlstm":
            m = layer.mlstm_layer
            NH = cfg.mlstm_num_heads
            heads = lambda t: t.view(B, S, NH, -1).transpose(1, 2)  # noqa: E731
            q, k, v = heads(h @ m.q.weight.T), heads(h @ m.k.weight.T), heads(h @ m.v.weight.T)
            i = cap(h @ m.igate_preact.weight.T + m.igate_preact.bias, cfg.mlstm_gate_soft_cap).transpose(1, 2)
            f = cap(h @ m.fgate_preact.weight.T + m.fgate_preact.bias, cfg.mlstm_gate_soft_cap).transpose(1, 2)
            cell, _ = mlstm_recurrent(q, k, v, i, f, eps=cfg.mlstm_eps)
            cell = cell.transpose(1, 2)  # [B, S, NH, dv]
            normed = F.layer_norm(cell.double(), cell.shape[-1:], eps=cfg.mlstm_norm_eps).to(x.dtype)
            normed = normed * m.multihead_norm.weight.view(NH, -1)
            out = (normed * torch.sigmoid(h @ m.ogate_preact.weight.T).view(B, S, NH, -1)).reshape(B, S, -1)
            x = x + out @ m.out_proj.weight.T
        else:
            a = layer.self_attn
            H, G, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
            heads = lambda t, n: t.view(B, S, n, D).transpose(1, 2)  # noqa: E731
            q, k, v = (heads(a.q_proj(h), H), heads(a.k_proj(h), G), heads(a.v_proj(h), G))
            q, k = _rope(q, cfg.rope_theta), _rope(k, cfg.rope_theta)
            w = window if kind == "sliding_attention" else None
            out = sliding_window_attention_masked(q, k, v, w).transpose(1, 2).reshape(B, S, -1)
            x = x + out @ a.o_proj.weight.T
        h = _norm(cfg, layer.post_attention_layernorm, x)
        x = x + (F.silu(h @ layer.mlp.gate_proj.weight.T) * (h @ layer.mlp.up_proj.weight.T)) @ layer.mlp.down_proj.weight.T
    x = _norm(cfg, model.model.norm, x)
    head = model.model.embed_tokens.weight if cfg.tie_word_embeddings else model.lm_head.weight
    return cap(x @ head.T, cfg.output_logit_soft_cap)


# A subprocess in which `import swax_megatron` fails, as on a machine with only torch and transformers.
_BLOCK_SWAX = textwrap.dedent("""
    import sys
    class _NoSwax:
        def find_spec(self, name, path=None, target=None):
            if name == "swax_megatron" or name.startswith("swax_megatron."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None
    sys.meta_path.insert(0, _NoSwax())
""")


def run_without_swax(code: str, cwd: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where swax_megatron cannot be imported, fully offline."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=os.path.join(cwd, "hf_home"),
               PYTHONPATH="")
    script = _BLOCK_SWAX + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
