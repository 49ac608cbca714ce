"""SwaxModel: embedding -> SwaxBlock (this stage's layers) -> final norm -> output layer.

    model = swax_model_from_recipe(recipe, vocab_size=tok.vocab_size)   # this rank's stage
    model.set_swa_window(w)                 # the step's window, same w on every rank
    loss = model(tokens, labels=labels)     # [b, s] per-token loss (last stage)
    logits = model(tokens)                  # [b, s, vocab / tp] (last stage)
    sd = model.sharded_state_dict()         # megatron dist_checkpointing, reshards over TP/PP

Incremental decoding (evaluation, eval/layout.py): one InferenceState per stage and batch; a
prefill call, then one token per call, each continuing from the layers' caches in it:
    state = InferenceState(); state.set_padding(mask)    # [b, s] left padding, optional
    logits = model(prompt_ids, inference_state=state)   # prefill
    logits = model(next_ids, inference_state=state)     # [b, 1]: the step
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.models.common.language_module.language_module import LanguageModule
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.spec_utils import ModuleSpec, build_module

from .attention import (AttentionCache, WindowedAttention, cached_self_attention, check_window,
                        resolve_attention_backend)
from .block import component_seeds, seeded_init
from .config import SwaxConfig, SwaxConfigError, swax_config_from_recipe
from .mlstm_layer import MLSTMCache, soft_cap
from .specs import get_swax_block_spec


class InferenceState:
    """What incremental decoding keeps between calls of one stage's forward: per row, the real
    tokens seen so far; per layer, its cache (S/G: attention.AttentionCache, the keys of the last
    window - 1 tokens or of all; X: mlstm_layer.MLSTMCache, the (C, n, m) state).

    Tokens are numbered per row by real tokens before them (left padding: -1), so a padded row
    computes what it would alone: RoPE positions are these numbers, attention matches keys by
    them, padding leaves mLSTM states as they are."""

    def __init__(self):
        self.token_count: Optional[torch.Tensor] = None  # [b]
        self.token_index: Optional[torch.Tensor] = None  # [b, s] of the current call
        self.real: Optional[torch.Tensor] = None  # [b, s] bool of the current call, None: all real
        self.caches = {}
        self._padding: Optional[torch.Tensor] = None

    def set_padding(self, mask: Optional[torch.Tensor]) -> None:
        """The next call's [b, s] mask (1/True: token, 0/False: padding, on the left)."""
        self._padding = None if mask is None else mask.to(torch.bool)

    def begin(self, batch: int, length: int, device) -> torch.Tensor:
        """Number the next call's tokens; returns their RoPE positions [b, s]."""
        seen = self.token_count if self.token_count is not None else torch.zeros(
            batch, dtype=torch.long, device=device)
        real, self._padding = self._padding, None
        if real is None:
            index = seen[:, None] + torch.arange(length, device=device)
            self.token_count = seen + length
        else:
            if tuple(real.shape) != (batch, length):
                raise ValueError(f"padding mask of shape {tuple(real.shape)} for a call of {(batch, length)}")
            real = real.to(device)
            index = (seen[:, None] + real.long().cumsum(-1) - 1).masked_fill(~real, -1)
            self.token_count = seen + real.long().sum(-1)
        self.token_index, self.real = index, real
        return index.clamp(min=0)

    def mix(self, layer, hidden_states, rotary_pos_emb):
        """layer.mixer over this call's tokens, continuing from the layer's cache: (out, bias)."""
        cache = self.caches.get(layer.layer_number)
        if layer.symbol == "X":
            if cache is None:
                cache = self.caches[layer.layer_number] = MLSTMCache()
            return layer.mixer(hidden_states, decode_cache=cache, real=self.real)
        if cache is None:
            cache = self.caches[layer.layer_number] = AttentionCache()
        return cached_self_attention(layer.mixer, hidden_states, rotary_pos_emb, cache, self.token_index)


class SwaxModel(LanguageModule):
    """SWAX language model (one pipeline stage of it).

    Args:
        config: SwaxConfig (vocab_size, max_sequence_length and tied embeddings come from it).
        block_spec: ModuleSpec of the SwaxBlock; default get_swax_block_spec("local").
        pre_process / post_process: this stage holds the embedding / the final norm and output.
        parallel_output: keep logits split over TP (vocab-parallel cross entropy needs this).
    """

    def __init__(self, config: SwaxConfig, block_spec: Optional[ModuleSpec] = None,
                 pre_process: bool = True, post_process: bool = True, parallel_output: bool = True,
                 pg_collection: Optional[ProcessGroupCollection] = None):
        if not isinstance(config, SwaxConfig):
            raise TypeError(f"SwaxModel needs a SwaxConfig, got {type(config).__name__}")
        if config.vocab_size is None:
            raise SwaxConfigError("SwaxConfig.vocab_size is None: set the (padded) vocabulary size")
        super().__init__(config=config, pg_collection=pg_collection)
        self.model_type = ModelType.encoder_or_decoder  # what megatron's schedules expect
        self.pre_process, self.post_process = pre_process, post_process
        self.parallel_output = parallel_output
        self.vocab_size = config.vocab_size
        self.max_sequence_length = config.max_sequence_length
        self.share_embeddings_and_output_weights = config.share_embeddings_and_output_weights
        base_seed = config.init_seed if config.init_seed is not None else torch.initial_seed()
        seeds = component_seeds(base_seed, config.num_layers)

        if pre_process:
            with seeded_init(seeds, "embedding"):
                self.embedding = LanguageModelEmbedding(
                    config=config, vocab_size=self.vocab_size,
                    max_sequence_length=self.max_sequence_length, position_embedding_type="none",
                    tp_group=self.pg_collection.tp)
        self.rotary_pos_emb = None
        if set(config.layer_symbols) & {"S", "G"}:
            self.rotary_pos_emb = RotaryEmbedding(
                kv_channels=config.kv_channels, rotary_percent=1.0, rotary_base=config.rotary_base,
                use_cpu_initialization=config.use_cpu_initialization, cp_group=self.pg_collection.cp)
        self.decoder = build_module(block_spec or get_swax_block_spec("local"), config=config,
                                    pre_process=pre_process, post_process=post_process,
                                    pg_collection=self.pg_collection, layer_init_seeds=seeds)
        if post_process:
            with seeded_init(seeds, "output_layer"):
                self.output_layer = tensor_parallel.ColumnParallelLinear(
                    config.hidden_size, self.vocab_size, config=config,
                    init_method=config.init_method, bias=False, skip_bias_add=False,
                    gather_output=not parallel_output,
                    skip_weight_param_allocation=pre_process and self.share_embeddings_and_output_weights,
                    tp_group=self.pg_collection.tp)
        if pre_process or post_process:
            self.setup_embeddings_and_output_layer()

    # --- per-step window ------------------------------------------------------------------------
    def set_swa_window(self, window: Optional[int]) -> None:
        """Use `window` (tokens, query included) in every S layer of this stage from now on;
        None restores config.swa.window. G layers keep full attention. Every rank and stage must
        call it with the same value (the window schedule is a function of (seed, step))."""
        window = check_window(window)
        # Selected by the shared interface, not by a kernel's class: selecting SwaxCoreAttention
        # once left TE's core attention at config.swa.window for the whole run.
        for module in self.modules():
            if isinstance(module, WindowedAttention):
                module.set_window(window)

    @property
    def swa_window(self) -> int:
        """The window S layers use now (config.swa.window until set_swa_window is called)."""
        for module in self.modules():
            if isinstance(module, WindowedAttention) and module.sliding:
                return module.window
        return self.config.swa.window

    # --- pipeline ---------------------------------------------------------------------------------
    def set_input_tensor(self, input_tensor) -> None:
        if not isinstance(input_tensor, list):
            input_tensor = [input_tensor]
        if len(input_tensor) != 1:
            raise ValueError(f"SwaxModel takes one input tensor per stage, got {len(input_tensor)}")
        self.decoder.set_input_tensor(input_tensor[0])

    # --- forward ----------------------------------------------------------------------------------
    def forward(self, input_ids: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None,
                decoder_input: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None,
                inference_state: Optional[InferenceState] = None, return_hidden: bool = False,
                **unused):
        """input_ids [b, s] (first stage). Returns, on the last stage, the per-token loss [b, s]
        when labels [b, s] are given, else logits [b, s, vocab/tp] (vocab-parallel unless
        parallel_output=False); on other stages the hidden states [s, b, hidden] for the next.

        position_ids are not used: RoPE positions are 0..s-1 (with inference_state, each token's
        number in its row). attention_mask must be None (the attention is causal / sliding by
        construction). inference_state: incremental decoding (module docstring). return_hidden:
        the last stage returns its final hidden states [s, b, hidden] (output_logits of the
        positions wanted: a prefill's last, or long sequences in pieces)."""
        if unused:
            bad = {k for k, v in unused.items() if v is not None}
            if bad:
                raise TypeError(f"SwaxModel.forward does not support {sorted(bad)}")
        if attention_mask is not None:
            raise ValueError("SwaxModel builds its causal / sliding-window masks itself; pass "
                             "attention_mask=None (e.g. GPTDatasetConfig(create_attention_mask=False))")
        if decoder_input is None and self.pre_process:
            decoder_input = self.embedding(input_ids=input_ids, position_ids=None)
        rotary = None
        if inference_state is not None:
            x = decoder_input if decoder_input is not None else self.decoder.input_tensor
            positions = inference_state.begin(x.shape[1], x.shape[0], x.device)  # [b, s]
            if self.rotary_pos_emb is not None:  # each token's own position: [s, b, 1, d]
                rotary = self.rotary_pos_emb(int(positions.max()) + 1)[:, 0][positions.t()]
            hidden = self.decoder(decoder_input, rotary_pos_emb=rotary, inference_state=inference_state)
        else:
            if self.rotary_pos_emb is not None:
                seq_len = self.rotary_pos_emb.get_rotary_seq_len(None, self.decoder, decoder_input,
                                                                   self.config, None)
                rotary = self.rotary_pos_emb(seq_len)
            hidden = self.decoder(decoder_input, rotary_pos_emb=rotary)
        if not self.post_process or return_hidden:
            return hidden
        logits = self.output_logits(hidden)
        if labels is None:
            return logits.transpose(0, 1).contiguous()  # [s, b, v] -> [b, s, v]
        return self.compute_language_model_loss(labels, logits)

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states [s, b, hidden] -> soft-capped logits [s, b, vocab/tp] (last stage)."""
        weight = None
        if self.share_embeddings_and_output_weights:
            weight = self.shared_embedding_or_output_weight()
        logits, _ = self.output_layer(hidden, weight=weight)
        return soft_cap(logits, self.config.output_logit_soft_cap)


def swax_model_from_recipe(recipe, vocab_size: Optional[int] = None, *, backend: str = "auto",
                           pre_process: Optional[bool] = None, post_process: Optional[bool] = None,
                           pg_collection: Optional[ProcessGroupCollection] = None,
                           **config_overrides) -> SwaxModel:
    """This rank's SwaxModel for a resolved recipe (megatron parallel_state must be initialised).

    backend: "local", "te", or "auto" (te on CUDA when transformer_engine imports, else local).
    pre_process / post_process default to this rank's pipeline position."""
    config = swax_config_from_recipe(recipe, vocab_size, **config_overrides)
    if backend == "auto":
        # The TE spec where TE's kernels will run; otherwise the local one (whose attention then
        # uses FlexAttention on CUDA or ops.swa on CPU, per model.attention_backend).
        # Ulysses (context parallel) wraps the local kernels only (models/ulysses.py).
        te = resolve_attention_backend(config.attention_backend) == "te" and config.context_parallel_size == 1
        backend = "te" if te else "local"
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    return SwaxModel(config, get_swax_block_spec(backend), pre_process=pre_process,
                     post_process=post_process, pg_collection=pg_collection)
