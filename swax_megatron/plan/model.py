"""What one pipeline stage of a SWAX model holds on one GPU: parameters (exactly, per TP rank) and
the activations it keeps for the backward pass (per token, per layer type and recompute setting).

Plain Python over a resolved recipe: no torch, no megatron, so `swax plan` answers at once.

Parameters follow the megatron model's modules (models/specs.py, the local and TE specs have the
same weights): tensor-parallel weights are split over TP ranks, norms are replicated, the
vocabulary-parallel embedding and output layer are split over TP; the embedding lives on the
first pipeline stage, the final norm and output layer on the last (a tied output layer is a
second copy there when PP > 1, as megatron keeps it). tests/plan/test_plan_params.py checks the
counts against the megatron model built on the meta device (every recipe) and against the shards
of real TP=2 x PP=2 ranks.

Activations are counted as the tensors autograd keeps from the forward pass to the backward
pass, per token, in the layer's own order (megatron local spec, measured with
torch.autograd.graph.saved_tensors_hooks and checked against torch's memory profiler on CPU in
tests/plan/test_plan_memory.py):

  every layer     pre-mixer norm: its input, the normalised tensor and the norm output (= input
                  of the first projection): 3 h, plus the per-token rstd (fp32)
  MLP             pre-MLP norm as above (3 h), fc1's output [gate; up] (2 f), silu(gate), up
                  and their product (= fc2's input): 3 f
  S / G mixer     "flash" (TE / FlexAttention on GPU): the fused q/k/v projection output
                  ((H + 2 G) d; v stays a view of it), q and k after RoPE (H d + G d), the
                  output (H d, also linear_proj's input) and the log-sum-exp (H, fp32);
                  "chunked" (the O(S x w) torch path on CPU): the same plus linear_proj's own
                  copy of the output (H d); "sdpa" (torch's dense attention on CPU: G layers,
                  short sequences): q and k, v repeated to H heads, output, log-sum-exp;
                  RoPE's cos/sin tables: 4 d per sequence position
  X mixer         input and forget gates (2 NH), the cell's saved tensors (kernel-dependent,
                  below), then out_norm's input and output, its statistics, sigmoid(o), the
                  gated product and linear_proj's input: 6 NH dv
    cell "triton" (GPU): contiguous q, k, v (NH (2 dqk + dv)), the per-chunk states
                  (NH dqk dv / L per token, in the input dtype), gate buffers (4 NH, fp32)
    cell "torch"  (CPU): scaled q, k, v, k*w and q*s (NH (4 dqk + dv)), the intra-chunk decay
                  and score matrices (2 NH L), the previous chunk's state (NH dqk dv / L), gate
                  vectors (4 NH), all fp32
  output          final norm (3 h), soft-capped logits and the softmax of the loss (2 V / TP;
                  the softmax in fp32)

Sharding: tensors inside tensor-parallel regions (heads, MLP width, vocabulary) are split over
TP; hidden-sized tensors outside them (norms, residual stream) only under sequence parallelism.
Ulysses splits the sequence outside the mixers and the heads inside, so every tensor is divided
by the Ulysses degree. Recomputation (train.recompute):
  selective   `core_attn`: the attention core keeps only its inputs (mixed q/k/v, q, k after
              RoPE) and recomputes its log-sum-exp (linear_proj still keeps its input, the
              output); `mlstm_cell`: the cell keeps only its inputs (the q/k/v/o projection
              output it reads views of, and the gates); `mlp`: the MLP keeps only its input;
              what they drop comes back, one layer at a time, in the backward pass
  full        a recomputed layer keeps only its input (h); groups of `num_layers` layers share
              one input (method uniform) or only the first `num_layers` eligible layers of a
              stage recompute (method block); the backward pass re-materialises one group at a
              time, which the peak includes.
Peak = stored activations + the largest transient: the gradient of the logits (V / TP, fp32)
at the start of the backward pass, or, once the output layer's tensors are freed, a layer's
backward workspace (its MLP's gradients, 2 f + 2 h; the chunked CPU attention's recomputed
probability tile) plus, under full recomputation, its run's re-materialised activations.
Measured on CPU (fp32, tests/plan/test_plan_memory.py): within 5% for every layer type and
recompute setting, and per rank at TP=2 with and without sequence parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..config.pattern import expand, split_for_pipeline

VOCAB_MULTIPLE = 128  # models.config.VOCAB_MULTIPLE (a test checks they agree; no megatron here)
ATTENTION_KERNELS = ("flash", "chunked", "sdpa")
MLSTM_KERNELS = ("triton", "torch")
FP32 = 4


def padded_vocab(vocab: int) -> int:
    return -(-int(vocab) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


@dataclass(frozen=True)
class Shape:
    """The sizes of a recipe's model that parameters and activations depend on."""
    hidden: int
    ffn: int
    vocab: int  # padded
    pattern: str  # as written (may hold '|' stage markers)
    heads: int
    groups: int
    head_dim: int
    mlstm_heads: int
    dqk: int
    dv: int
    chunk: int
    layernorm: bool  # LayerNorm (weight + bias) instead of RMSNorm (weight)
    qkv_bias: bool
    tied: bool

    @property
    def symbols(self) -> str:
        return expand(self.pattern)

    @classmethod
    def from_recipe(cls, recipe) -> "Shape":
        m = recipe.model
        vocab = m.vocab_size
        if vocab is None:
            if recipe.data.tokenizer_model is not None:
                raise ValueError("model.vocab_size is not set and the tokenizer's size is not "
                                 "known without reading data.tokenizer_model; set model.vocab_size")
            vocab = recipe.data.tokenizer_vocab_size
        dqk, dv = m.mlstm.head_dims(m.hidden_size)
        return cls(hidden=m.hidden_size, ffn=m.ffn_hidden_size, vocab=padded_vocab(vocab),
                   pattern=m.layer_pattern, heads=m.num_attention_heads,
                   groups=m.num_query_groups or m.num_attention_heads,
                   head_dim=m.hidden_size // m.num_attention_heads,
                   mlstm_heads=m.mlstm.num_heads, dqk=dqk, dv=dv, chunk=m.mlstm.chunk_size,
                   layernorm=m.normalization == "LayerNorm", qkv_bias=m.add_qkv_bias,
                   tied=m.tie_embeddings)


# ------------------------------------------------------------------------------------ parameters

def _norm(s: Shape) -> int:
    return s.hidden * (2 if s.layernorm else 1)


def layer_parameters(s: Shape, symbol: str, tp: int = 1) -> Dict[str, int]:
    """Parameters of one layer on one TP rank, by part: norms (replicated), mixer, MLP."""
    h = s.hidden
    if symbol == "X":
        NH = s.mlstm_heads
        mixer = (NH * (2 * s.dqk + 2 * s.dv) * h  # linear_qkvo
                 + 2 * NH * h  # linear_gates
                 + 2 * NH  # igate_bias, fgate_bias
                 + NH * s.dv  # out_norm (per-head LayerNorm weight)
                 + NH * s.dv * h) // tp  # linear_proj
    else:
        qkv = (s.heads + 2 * s.groups) * s.head_dim
        mixer = (qkv * h + (qkv if s.qkv_bias else 0) + s.heads * s.head_dim * h) // tp
    return {"norms": 2 * _norm(s), "mixer": mixer, "mlp": 3 * s.ffn * h // tp}


def stage_parameters(s: Shape, tp: int = 1, pp: int = 1, stage: int = 0) -> Dict[str, int]:
    """Parameters one rank of pipeline stage `stage` holds, by part, and their total."""
    symbols = s.symbols if pp == 1 else split_for_pipeline(s.pattern, pp)[stage]
    out = {"embedding": 0, "attention": 0, "mlstm": 0, "mlp": 0, "norms": 0, "output": 0}
    for sym in symbols:
        p = layer_parameters(s, sym, tp)
        out["mlstm" if sym == "X" else "attention"] += p["mixer"]
        out["mlp"] += p["mlp"]
        out["norms"] += p["norms"]
    table = s.vocab * s.hidden // tp
    if stage == 0:
        out["embedding"] = table
    if stage == pp - 1:
        out["norms"] += _norm(s)
        if not (s.tied and pp == 1):
            out["output"] = table
    out["total"] = sum(out.values())
    return out


def model_parameters(s: Shape) -> Dict[str, int]:
    """The model's own parameters (a tied output layer counted once), by part."""
    return stage_parameters(s, 1, 1, 0)


# ----------------------------------------------------------------------------------- activations

@dataclass(frozen=True)
class Kernels:
    attention: str = "flash"  # ATTENTION_KERNELS; G layers use `global_attention`
    global_attention: Optional[str] = None  # None: same as `attention`
    mlstm: str = "triton"  # MLSTM_KERNELS

    @classmethod
    def for_gpu(cls, model) -> "Kernels":
        """What trains a recipe's model (ModelConfig) on a GPU: TE or FlexAttention and the Triton
        mLSTM, unless the recipe forces the torch paths."""
        torch_attention = model.attention_backend == "torch"
        return cls(attention="chunked" if torch_attention else "flash",
                   global_attention="sdpa" if torch_attention else None,
                   mlstm="torch" if model.mlstm.kernel == "torch" else "triton")

    @classmethod
    def cpu(cls) -> "Kernels":
        """What runs on CPU at sequence >= 256 with 2 x window <= sequence (ops.swa.choose_impl)."""
        return cls(attention="chunked", global_attention="sdpa", mlstm="torch")


def _split(n_tp: float, n_seq: float, tp: int, sp: bool) -> float:
    """Elements per token on one TP rank: `n_tp` inside TP regions, `n_seq` outside them."""
    return n_tp / tp + (n_seq / tp if sp else n_seq)


def _norm_block(s: Shape, a: int, tp: int, sp: bool) -> float:
    """A pre-norm and the input of the projection after it: input, normalised, output; rstd."""
    return _split(0, 3 * s.hidden, tp, sp) * a + _split(0, 1, tp, sp) * FP32


def _mlp(s: Shape, a: int, tp: int, sp: bool, selective: bool = False) -> float:
    """selective (`mlp`): the MLP keeps only its input, the pre-MLP norm's output."""
    return _norm_block(s, a, tp, sp) + (0 if selective else _split(5 * s.ffn, 0, tp, sp) * a)


def _attention(s: Shape, a: int, tp: int, sp: bool, kernel: str, micro_batch: int,
               selective: bool) -> float:
    H, G, d = s.heads, s.groups, s.head_dim
    rope = 4 * d / micro_batch * a  # cos/sin tables of q and k: one row per sequence position
    if kernel == "sdpa":
        kept = H * d + 2 * H * d  # q, k and v repeated to H heads (torch's dense attention)
        core = H * d  # output
    else:
        kept = (H + 2 * G) * d + H * d + G * d  # mixed q/k/v (v a view of it), q and k after RoPE
        core = H * d + (H * d if kernel == "chunked" else 0)  # output (+ linear_proj's copy)
    lse = H / tp * FP32
    if selective:  # the core keeps its inputs; output and lse come back in the backward
        body = _split(kept, 0, tp, sp) * a
        # linear_proj still needs its input (the recomputed output is not kept between passes)
        body += _split(H * d, 0, tp, sp) * a
    else:
        body = _split(kept + core, 0, tp, sp) * a + lse
    return _norm_block(s, a, tp, sp) + body + rope


def _mlstm(s: Shape, a: int, tp: int, sp: bool, kernel: str, selective: bool) -> float:
    NH, dqk, dv, L = s.mlstm_heads, s.dqk, s.dv, s.chunk
    gates = _split(2 * NH, 0, tp, sp) * FP32
    post = _split(6 * NH * dv, 0, tp, sp) * a + _split(NH, 0, tp, sp) * FP32
    if selective:  # the cell keeps its inputs: views of the q/k/v/o projection output, the gates
        cell = _split(NH * (2 * dqk + 2 * dv), 0, tp, sp) * a
    elif kernel == "torch":
        cell = _split(NH * (4 * dqk + dv) + 2 * NH * L + NH * dqk * dv / L + 4 * NH, 0, tp, sp) * FP32
    else:
        cell = (_split(NH * (2 * dqk + dv) + NH * dqk * dv / L, 0, tp, sp) * a
                + _split(4 * NH, 0, tp, sp) * FP32)
    return _norm_block(s, a, tp, sp) + gates + cell + post


def layer_activation_bytes(s: Shape, symbol: str, *, act_bytes: int, micro_batch: int = 1,
                           tp: int = 1, sp: bool = False, ulysses: int = 1,
                           kernels: Kernels = Kernels(), selective: Sequence[str] = ()) -> float:
    """Bytes per token (of the full sequence) one rank keeps for one layer's backward, no full
    recomputation; `selective`: the recompute modules (core_attn, mlstm_cell, mlp)."""
    a = act_bytes
    if symbol == "X":
        mixer = _mlstm(s, a, tp, sp, kernels.mlstm, "mlstm_cell" in selective)
    else:
        kernel = kernels.attention if symbol == "S" else (kernels.global_attention or kernels.attention)
        mixer = _attention(s, a, tp, sp, kernel, micro_batch, "core_attn" in selective)
    return (mixer + _mlp(s, a, tp, sp, "mlp" in selective)) / ulysses


def output_activation_bytes(s: Shape, *, act_bytes: int, tp: int = 1, sp: bool = False,
                            ulysses: int = 1) -> float:
    """Final norm, soft-capped logits and the loss's softmax (fp32), per token on one rank."""
    return (_norm_block(s, act_bytes, tp, sp) + s.vocab / tp * (act_bytes + FP32)) / ulysses


def logits_grad_bytes(s: Shape, *, tp: int = 1, ulysses: int = 1) -> float:
    """The gradient of the logits (fp32) that opens the backward pass, per token."""
    return s.vocab / tp * FP32 / ulysses


@dataclass(frozen=True)
class Recompute:
    """train.recompute, as the planner reads it."""
    granularity: str = "none"  # none | selective | full
    modules: tuple = ("core_attn", "mlstm_cell")
    layer_types: tuple = ("S", "G", "X")
    method: str = "uniform"  # uniform | block
    num_layers: int = 1

    @classmethod
    def from_config(cls, r) -> "Recompute":
        return cls(r.granularity, tuple(r.modules), tuple(r.layer_types), r.method, r.num_layers)

    def with_granularity(self, granularity: str) -> "Recompute":
        return Recompute(granularity, self.modules, self.layer_types, self.method, self.num_layers)


def recompute_runs(symbols: str, recompute: "Recompute") -> List[Tuple[int, int, bool]]:
    """(start, end, recomputed) runs of a stage's layers under full recomputation: the rule of
    models.block.recompute_groups (a test checks they agree; that module imports megatron).
    uniform: consecutive layers of `layer_types`, up to `num_layers` to a run, one saved input
    each; block: the first `num_layers` such layers of the stage, one to a run."""
    runs: List[Tuple[int, int, bool]] = []
    budget, i = recompute.num_layers, 0
    while i < len(symbols):
        if symbols[i] not in recompute.layer_types:
            runs.append((i, i + 1, False))
            i += 1
        elif recompute.method == "uniform":
            end = i
            while (end < len(symbols) and end - i < recompute.num_layers
                   and symbols[end] in recompute.layer_types):
                end += 1
            runs.append((i, end, True))
            i = end
        else:
            runs.append((i, i + 1, budget > 0))
            budget -= 1
            i += 1
    return runs


@dataclass(frozen=True)
class StageActivations:
    stored_per_token: float  # bytes per token of one microbatch kept until its backward
    transient_per_token: float  # the largest extra during the backward pass
    by_type: Dict[str, float]  # stored bytes per token by layer type (and "output")


def backward_workspace(s: Shape, symbol: str, *, act_bytes: int, tp: int = 1, sp: bool = False,
                       ulysses: int = 1, kernels: Kernels = Kernels(),
                       window: Optional[int] = None) -> float:
    """Gradients a layer's backward pass holds at once, per token: the MLP's (fc1's output, 2 f,
    the block's input and residual, 2 h); the chunked CPU attention also recomputes one tile of
    probabilities per query ((window + block) keys per head, fp32)."""
    out = (_split(2 * s.ffn, 0, tp, sp) + _split(0, 2 * s.hidden, tp, sp)) * act_bytes
    if symbol == "S" and kernels.attention == "chunked" and window is not None:
        block = 64  # ops/swa/chunk.py DEFAULT_BLOCK
        tile = (-(-(window - 1) // block) + 1) * block
        out += s.heads / tp * tile * FP32
    return out / ulysses


def stage_activations(s: Shape, symbols: str, *, last: bool, act_bytes: int, micro_batch: int,
                      tp: int = 1, sp: bool = False, ulysses: int = 1,
                      kernels: Kernels = Kernels(), recompute: "Recompute" = None,
                      window: Optional[int] = None) -> StageActivations:
    """Activations of one pipeline stage (its layer `symbols`) for one microbatch, per token.

    The peak of the backward pass is the larger of: everything stored plus the logits' gradient
    (its start, last stage), and, while a layer (or a recomputed run of layers) is being
    differentiated, what the stage keeps besides the output layer's tensors (freed by then) plus
    that layer's or run's full activations (recomputed) and its backward workspace."""
    recompute = recompute or Recompute()
    kw = dict(act_bytes=act_bytes, micro_batch=micro_batch, tp=tp, sp=sp, ulysses=ulysses,
              kernels=kernels)
    selective = recompute.modules if recompute.granularity == "selective" else ()
    full = [layer_activation_bytes(s, sym, **kw) for sym in symbols]
    kept = [layer_activation_bytes(s, sym, selective=selective, **kw) for sym in symbols]
    work = [backward_workspace(s, sym, act_bytes=act_bytes, tp=tp, sp=sp, ulysses=ulysses,
                               kernels=kernels, window=window) for sym in symbols]
    # extra while layer i's backward runs: its workspace and what selective recomputation
    # brings back of it
    during = [work[i] + full[i] - kept[i] for i in range(len(symbols))]
    if recompute.granularity == "full":
        layer_input = _split(0, s.hidden, tp, sp) * act_bytes / ulysses
        for start, end, recomputed in recompute_runs(symbols, recompute):
            if not recomputed:
                continue
            rematerialised = sum(full[start:end])
            for i in range(start, end):
                kept[i] = 0.0
                during[i] = rematerialised + work[i]
            kept[start] = layer_input
    by_type: Dict[str, float] = {}
    for sym, b in zip(symbols, kept):
        by_type[sym] = by_type.get(sym, 0.0) + b
    output = output_activation_bytes(s, act_bytes=act_bytes, tp=tp, sp=sp, ulysses=ulysses) if last else 0.0
    if last:
        by_type["output"] = output
    transient = max([logits_grad_bytes(s, tp=tp, ulysses=ulysses) if last else 0.0]
                    + [d - output for d in during])
    return StageActivations(sum(by_type.values()), max(transient, 0.0), by_type)
