"""Weight names and configuration between the swax_megatron model and the Hugging Face export.

    hf_config = hf_config_from_recipe(recipe.model, vocab_size=512, seq_length=2048, window=2048)
    hf_sd = megatron_to_hf(megatron_tp1_state_dict, hf_config)     # strict both ways
    mg_sd = hf_to_megatron(hf_sd, hf_config)                        # the exact inverse
    fields = recipe_model_fields(hf_config)                         # ModelConfig fields back

The megatron side is the TP=1 / PP=1 state dict of swax_megatron.models.SwaxModel (the names of
models/reference.py); the HF side is swax_megatron.hf.modeling_swax.SwaxForCausalLM:

    embedding.word_embeddings               model.embed_tokens
    decoder.layers.N.input_layernorm        model.layers.N.input_layernorm
    decoder.layers.N.pre_mlp_layernorm      model.layers.N.post_attention_layernorm
    S/G mixer.linear_qkv (+ bias)           self_attn.q_proj / k_proj / v_proj   rows per kv group g:
                                            [q heads of g, k_g, v_g]
    S/G mixer.linear_proj                   self_attn.o_proj
    X mixer.linear_qkvo                     mlstm_layer.q / k / v / ogate_preact  rows per head:
                                            [q (dqk), k (dqk), v (dv), o (dv)]
    X mixer.linear_gates + igate_bias,      mlstm_layer.igate_preact / fgate_preact (weight, bias)
      fgate_bias                            rows per head: [i, f]
    X mixer.out_norm                        mlstm_layer.multihead_norm
    X mixer.linear_proj                     mlstm_layer.out_proj
    mlp.linear_fc1 = [gate; up]             mlp.gate_proj, mlp.up_proj
    mlp.linear_fc2                          mlp.down_proj
    decoder.final_norm                      model.norm
    output_layer                            lm_head (absent when the embeddings are tied)

Both directions only split, stack and reshape: megatron -> HF -> megatron is bitwise. Every
tensor must be used exactly once and have the shape the configuration implies; anything else is a
ConversionError with one line naming the tensor. Imports torch and transformers only (and the
recipe schema's pattern helpers), never megatron.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from .configuration_swax import SwaxHFConfig

LAYER_TYPES = {"S": "sliding_attention", "G": "full_attention", "X": "mlstm"}
SYMBOLS = {v: k for k, v in LAYER_TYPES.items()}
NORM_TYPES = {"RMSNorm": "rms_norm", "LayerNorm": "layer_norm"}
MEGATRON_NORMS = {v: k for k, v in NORM_TYPES.items()}


class ConversionError(ValueError):
    """A checkpoint, export or setting that cannot be converted; `str(err)` is one line."""


def _shape(t) -> List[int]:
    return list(t.shape)


def _few(names: List[str], limit: int = 3) -> str:
    names = sorted(names)
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# --- configuration -----------------------------------------------------------------------------

def hf_config_from_recipe(model, *, vocab_size: int, seq_length: int, window: int,
                          token_ids: Optional[Dict[str, Optional[int]]] = None,
                          **extra) -> SwaxHFConfig:
    """The SwaxHFConfig of a recipe's resolved ModelConfig (config.resolve fills ffn size and kv
    heads); `vocab_size` is the model's (padded) vocabulary, `window` the evaluation window stored
    as sliding_window. Refuses, with one line, what the HF model cannot express."""
    from ..config.pattern import expand

    symbols = expand(model.layer_pattern)
    bad = sorted(set(symbols) - set(LAYER_TYPES))
    if bad:
        raise ConversionError(f"layer symbol {bad[0]!r} has no Hugging Face layer type")
    if model.normalization not in NORM_TYPES:
        raise ConversionError(f"normalization {model.normalization!r} has no Hugging Face norm_type")
    if model.hidden_size % model.num_attention_heads:
        raise ConversionError(f"hidden_size {model.hidden_size} is not divisible by "
                              f"{model.num_attention_heads} attention heads")
    dqk, dv = model.mlstm.head_dims(model.hidden_size)
    ids = token_ids or {}
    return SwaxHFConfig(
        vocab_size=vocab_size, hidden_size=model.hidden_size,
        intermediate_size=model.ffn_hidden_size,
        layer_types=[LAYER_TYPES[s] for s in symbols],
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.num_query_groups or model.num_attention_heads,
        head_dim=model.hidden_size // model.num_attention_heads,
        attention_bias=model.add_qkv_bias, sliding_window=window, rope_theta=model.rope_base,
        mlstm_num_heads=model.mlstm.num_heads, mlstm_qk_head_dim=dqk, mlstm_v_head_dim=dv,
        mlstm_gate_soft_cap=model.mlstm.gate_soft_cap, mlstm_norm_eps=model.mlstm.norm_epsilon,
        mlstm_eps=model.mlstm.cell_epsilon, mlstm_chunk_size=model.mlstm.chunk_size,
        mlstm_igate_bias_init=model.mlstm.igate_bias_init,
        mlstm_fgate_bias_init=list(model.mlstm.fgate_bias_init),
        norm_type=NORM_TYPES[model.normalization], norm_eps=model.norm_epsilon,
        output_logit_soft_cap=model.output_logit_soft_cap,
        tie_word_embeddings=model.tie_embeddings, initializer_range=model.init_method_std,
        max_position_embeddings=seq_length, pad_token_id=ids.get("pad"),
        bos_token_id=ids.get("bos"), eos_token_id=ids.get("eos"), **extra)


def recipe_model_fields(config: SwaxHFConfig) -> Dict[str, Any]:
    """The recipe's `model` section (schema.ModelConfig fields, mlstm and swa as dicts) that
    builds the model `config` describes; refuses what a recipe cannot express."""
    c = config
    if c.head_dim * c.num_attention_heads != c.hidden_size:
        raise ConversionError(f"head_dim {c.head_dim} x {c.num_attention_heads} heads != hidden_size "
                              f"{c.hidden_size}: megatron's attention uses hidden_size / heads per head")
    if c.mlstm_gate_soft_cap is None:
        raise ConversionError("mlstm_gate_soft_cap None: the training model always soft-caps the "
                              "mLSTM gates (model.mlstm.gate_soft_cap)")
    if c.vocab_size % 128:
        raise ConversionError(f"vocab_size {c.vocab_size} is not a multiple of 128: megatron pads the "
                              f"vocabulary to one, so the embedding would not fit")
    NH = c.mlstm_num_heads
    qk, v = c.mlstm_qk_head_dim * NH / c.hidden_size, c.mlstm_v_head_dim * NH / c.hidden_size
    return {
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "num_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads, "num_query_groups": c.num_key_value_heads,
        "ffn_hidden_size": c.intermediate_size,
        "layer_pattern": "".join(SYMBOLS[t] for t in c.layer_types),
        "swa": {"window": c.sliding_window},
        "mlstm": {"num_heads": NH, "qk_dim_factor": qk, "v_dim_factor": v,
                  "chunk_size": c.mlstm_chunk_size, "gate_soft_cap": float(c.mlstm_gate_soft_cap),
                  "igate_bias_init": float(c.mlstm_igate_bias_init),
                  "fgate_bias_init": [float(x) for x in c.mlstm_fgate_bias_init],
                  "norm_epsilon": float(c.mlstm_norm_eps), "cell_epsilon": float(c.mlstm_eps)},
        "normalization": MEGATRON_NORMS[c.norm_type], "norm_epsilon": float(c.norm_eps),
        "rope_base": float(c.rope_theta), "add_qkv_bias": bool(c.attention_bias),
        "tie_embeddings": bool(c.tie_word_embeddings),
        "output_logit_soft_cap": None if c.output_logit_soft_cap is None else float(c.output_logit_soft_cap),
    }


# --- tensors ------------------------------------------------------------------------------------

class _Taker:
    """Hands out the tensors of a state dict once each, checking shapes; `rest()` is what is left."""

    def __init__(self, sd: Dict[str, torch.Tensor], side: str):
        self.sd = {k: v for k, v in sd.items() if not k.endswith("_extra_state") and v is not None}
        self.side = side

    def __call__(self, name: str, shape: List[int]) -> torch.Tensor:
        if name not in self.sd:
            raise ConversionError(f"missing tensor {name} ({self.side})")
        t = self.sd.pop(name)
        if not isinstance(t, torch.Tensor):
            raise ConversionError(f"{name} is not a tensor ({self.side})")
        if _shape(t) != list(shape):
            raise ConversionError(f"shape mismatch: {name} is {_shape(t)} in the {self.side}, the "
                                  f"configuration expects {list(shape)}")
        return t

    def check_empty(self, what: str) -> None:
        if self.sd:
            raise ConversionError(f"unexpected tensor(s) in the {self.side}: {_few(list(self.sd))} "
                                  f"({what})")


def _dims(c: SwaxHFConfig):
    return (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.mlstm_num_heads,
            c.mlstm_qk_head_dim, c.mlstm_v_head_dim, c.intermediate_size)


def _norm_names(c: SwaxHFConfig) -> List[str]:
    return ["weight", "bias"] if c.norm_type == "layer_norm" else ["weight"]


def megatron_to_hf(sd: Dict[str, torch.Tensor], config: SwaxHFConfig) -> Dict[str, torch.Tensor]:
    """HF SwaxForCausalLM state dict from a TP=1 / PP=1 SwaxModel state dict (`_extra_state`
    entries ignored). Strict: a missing, superfluous or misshapen tensor is a ConversionError.
    The result owns its memory (no views of `sd`), as safetensors requires."""
    hidden, H, G, D, NH, dqk, dv, F_ = _dims(config)
    take = _Taker(sd, "megatron checkpoint")
    out: Dict[str, torch.Tensor] = {}

    def put(name: str, t: torch.Tensor) -> None:
        out[name] = t.contiguous().clone()

    put("model.embed_tokens.weight", take("embedding.word_embeddings.weight", [config.vocab_size, hidden]))
    for i, kind in enumerate(config.layer_types):
        p, q = f"decoder.layers.{i}.", f"model.layers.{i}."
        for n in _norm_names(config):
            put(f"{q}input_layernorm.{n}", take(f"{p}input_layernorm.{n}", [hidden]))
            put(f"{q}post_attention_layernorm.{n}", take(f"{p}pre_mlp_layernorm.{n}", [hidden]))
        if kind == "mlstm":
            w = take(f"{p}mixer.linear_qkvo.weight", [NH * (2 * dqk + 2 * dv), hidden])
            qw, kw, vw, ow = w.view(NH, 2 * dqk + 2 * dv, hidden).split([dqk, dqk, dv, dv], dim=1)
            for name, t, d in (("q", qw, dqk), ("k", kw, dqk), ("v", vw, dv), ("ogate_preact", ow, dv)):
                put(f"{q}mlstm_layer.{name}.weight", t.reshape(NH * d, hidden))
            gates = take(f"{p}mixer.linear_gates.weight", [NH * 2, hidden]).view(NH, 2, hidden)
            put(f"{q}mlstm_layer.igate_preact.weight", gates[:, 0])
            put(f"{q}mlstm_layer.fgate_preact.weight", gates[:, 1])
            put(f"{q}mlstm_layer.igate_preact.bias", take(f"{p}mixer.igate_bias", [NH]))
            put(f"{q}mlstm_layer.fgate_preact.bias", take(f"{p}mixer.fgate_bias", [NH]))
            put(f"{q}mlstm_layer.multihead_norm.weight", take(f"{p}mixer.out_norm.weight", [NH * dv]))
            put(f"{q}mlstm_layer.out_proj.weight", take(f"{p}mixer.linear_proj.weight", [hidden, NH * dv]))
        else:
            per = H // G
            w = take(f"{p}mixer.linear_qkv.weight", [(H + 2 * G) * D, hidden]).view(G, per + 2, D, hidden)
            put(f"{q}self_attn.q_proj.weight", w[:, :per].reshape(H * D, hidden))
            put(f"{q}self_attn.k_proj.weight", w[:, per].reshape(G * D, hidden))
            put(f"{q}self_attn.v_proj.weight", w[:, per + 1].reshape(G * D, hidden))
            if config.attention_bias:
                b = take(f"{p}mixer.linear_qkv.bias", [(H + 2 * G) * D]).view(G, per + 2, D)
                put(f"{q}self_attn.q_proj.bias", b[:, :per].reshape(H * D))
                put(f"{q}self_attn.k_proj.bias", b[:, per].reshape(G * D))
                put(f"{q}self_attn.v_proj.bias", b[:, per + 1].reshape(G * D))
            put(f"{q}self_attn.o_proj.weight", take(f"{p}mixer.linear_proj.weight", [hidden, H * D]))
        gate, up = take(f"{p}mlp.linear_fc1.weight", [2 * F_, hidden]).chunk(2, dim=0)
        put(f"{q}mlp.gate_proj.weight", gate)
        put(f"{q}mlp.up_proj.weight", up)
        put(f"{q}mlp.down_proj.weight", take(f"{p}mlp.linear_fc2.weight", [hidden, F_]))
    for n in _norm_names(config):
        put(f"model.norm.{n}", take(f"decoder.final_norm.{n}", [hidden]))
    if not config.tie_word_embeddings:
        put("lm_head.weight", take("output_layer.weight", [config.vocab_size, hidden]))
    take.check_empty("the Hugging Face model has no place for them: biases on linear layers, "
                     "a layer kind or norm it does not know, or an untied output layer in a tied model")
    return out


def hf_to_megatron(sd: Dict[str, torch.Tensor], config: SwaxHFConfig) -> Dict[str, torch.Tensor]:
    """The exact inverse of megatron_to_hf: the TP=1 / PP=1 SwaxModel state dict (without
    `_extra_state`). A tied export may carry lm_head.weight only as a copy of the embedding."""
    hidden, H, G, D, NH, dqk, dv, F_ = _dims(config)
    sd = dict(sd)
    if config.tie_word_embeddings and "lm_head.weight" in sd:
        lm, emb = sd.pop("lm_head.weight"), sd.get("model.embed_tokens.weight")
        if emb is None or lm.shape != emb.shape or not torch.equal(lm, emb):
            raise ConversionError("lm_head.weight differs from model.embed_tokens.weight, but the config "
                                  "ties them (tie_word_embeddings)")
    take = _Taker(sd, "Hugging Face export")
    out: Dict[str, torch.Tensor] = {}
    out["embedding.word_embeddings.weight"] = take("model.embed_tokens.weight", [config.vocab_size, hidden])
    for i, kind in enumerate(config.layer_types):
        p, q = f"decoder.layers.{i}.", f"model.layers.{i}."
        for n in _norm_names(config):
            out[f"{p}input_layernorm.{n}"] = take(f"{q}input_layernorm.{n}", [hidden])
            out[f"{p}pre_mlp_layernorm.{n}"] = take(f"{q}post_attention_layernorm.{n}", [hidden])
        if kind == "mlstm":
            parts = [take(f"{q}mlstm_layer.{name}.weight", [NH * d, hidden]).view(NH, d, hidden)
                     for name, d in (("q", dqk), ("k", dqk), ("v", dv), ("ogate_preact", dv))]
            out[f"{p}mixer.linear_qkvo.weight"] = torch.cat(parts, dim=1).reshape(NH * (2 * dqk + 2 * dv), hidden)
            i_w = take(f"{q}mlstm_layer.igate_preact.weight", [NH, hidden])
            f_w = take(f"{q}mlstm_layer.fgate_preact.weight", [NH, hidden])
            out[f"{p}mixer.linear_gates.weight"] = torch.stack([i_w, f_w], dim=1).reshape(NH * 2, hidden)
            out[f"{p}mixer.igate_bias"] = take(f"{q}mlstm_layer.igate_preact.bias", [NH])
            out[f"{p}mixer.fgate_bias"] = take(f"{q}mlstm_layer.fgate_preact.bias", [NH])
            out[f"{p}mixer.out_norm.weight"] = take(f"{q}mlstm_layer.multihead_norm.weight", [NH * dv])
            out[f"{p}mixer.linear_proj.weight"] = take(f"{q}mlstm_layer.out_proj.weight", [hidden, NH * dv])
        else:
            per = H // G
            qw = take(f"{q}self_attn.q_proj.weight", [H * D, hidden]).view(G, per, D, hidden)
            kw = take(f"{q}self_attn.k_proj.weight", [G * D, hidden]).view(G, 1, D, hidden)
            vw = take(f"{q}self_attn.v_proj.weight", [G * D, hidden]).view(G, 1, D, hidden)
            out[f"{p}mixer.linear_qkv.weight"] = torch.cat([qw, kw, vw], dim=1).reshape((H + 2 * G) * D, hidden)
            if config.attention_bias:
                qb = take(f"{q}self_attn.q_proj.bias", [H * D]).view(G, per, D)
                kb = take(f"{q}self_attn.k_proj.bias", [G * D]).view(G, 1, D)
                vb = take(f"{q}self_attn.v_proj.bias", [G * D]).view(G, 1, D)
                out[f"{p}mixer.linear_qkv.bias"] = torch.cat([qb, kb, vb], dim=1).reshape((H + 2 * G) * D)
            out[f"{p}mixer.linear_proj.weight"] = take(f"{q}self_attn.o_proj.weight", [hidden, H * D])
        gate = take(f"{q}mlp.gate_proj.weight", [F_, hidden])
        up = take(f"{q}mlp.up_proj.weight", [F_, hidden])
        out[f"{p}mlp.linear_fc1.weight"] = torch.cat([gate, up], dim=0)
        out[f"{p}mlp.linear_fc2.weight"] = take(f"{q}mlp.down_proj.weight", [hidden, F_])
    for n in _norm_names(config):
        out[f"decoder.final_norm.{n}"] = take(f"model.norm.{n}", [hidden])
    if not config.tie_word_embeddings:
        out["output_layer.weight"] = take("lm_head.weight", [config.vocab_size, hidden])
    take.check_empty("the config has no place for them")
    return {k: v.contiguous() for k, v in out.items()}


__all__ = ["ConversionError", "hf_config_from_recipe", "recipe_model_fields", "megatron_to_hf",
           "hf_to_megatron", "LAYER_TYPES", "SYMBOLS"]
