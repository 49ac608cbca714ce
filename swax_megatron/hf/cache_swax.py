"""SwaxCache: the generation state of a SWAX model, one object per layer (transformers 5 Cache API).

    sliding_attention  SlidingWindowLayer: a ring buffer of the last `sliding_window - 1` keys and
                       values per row (the query itself is the window's last token). Allocated once,
                       written in place: its size does not depend on how many tokens were generated.
    full_attention     FullAttentionLayer: keys and values of every token, growing.
    mlstm              MLSTMLayer: the recurrent state (C, n, m), a fixed size per layer.

Attention layers also keep each cached key's *token index*: how many real (non-padding) tokens of its
row came before it. Queries are matched to keys by token index, not by slot, so
  - left padding is invisible: a padding key has index -1 and is never attended to, and a padded
    row's window covers the same real tokens as the unpadded row's;
  - the ring buffer needs no reordering: a key's slot is its token index modulo the buffer size,
    and attention does not care in which order keys sit.

The cache counts, per row, the real tokens it has seen (`token_count`), so the model can number the
next tokens whatever attention mask it is given; `get_seq_length()` counts every consumed position,
padding included (what `generate()` slices its inputs by).

Rolling back (`crop`) is impossible for a recurrent state, so the model declares itself stateful
(`_is_stateful`): generate() then refuses assisted decoding instead of corrupting the state.

Imports only torch and transformers (copied next to exported weights, see modeling_swax.py).
"""

from typing import Optional

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _AttentionLayer(CacheLayerMixin):
    """Keys/values [B, Hkv, T, D] plus key_index [B, T] (token index, -1 for padding or empty)."""

    is_compileable = False
    is_croppable = False
    supports_early_init = False  # allocated from the first keys it sees (batch, heads, dtype, device)

    def __init__(self):
        super().__init__()
        self.key_index: Optional[torch.Tensor] = None
        self.cumulative_length = 0  # positions consumed, padding included

    def append(self, key_states, value_states, key_index):
        """Store this call's keys/values [B, Hkv, L, D] with their token indices [B, L]; return
        (keys, values, key_index) that this call's queries attend to: the cached ones and the new."""
        raise NotImplementedError

    def update(self, key_states, value_states, key_index=None, **kwargs):
        """The CacheLayerMixin contract: store, return the keys and values to attend to."""
        if key_index is None:  # no padding information: every position is a token
            key_index = _plain_index(self.cumulative_length, key_states)
        keys, values, _ = self.append(key_states, value_states, key_index)
        return keys, values

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        cached = 0 if not self.is_initialized else self.keys.shape[-2]
        return cached + query_length, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: keep the rows `beam_idx` (also used for batch selection)."""
        if self.is_initialized:
            idx = beam_idx.to(self.keys.device)
            self.keys = self.keys.index_select(0, idx)
            self.values = self.values.index_select(0, idx)
            self.key_index = self.key_index.index_select(0, idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.keys = self.keys.repeat_interleave(repeats, dim=0)
            self.values = self.values.repeat_interleave(repeats, dim=0)
            self.key_index = self.key_index.repeat_interleave(repeats, dim=0)

    def reset(self) -> None:
        self.keys = self.values = self.key_index = None
        self.is_initialized = False
        self.cumulative_length = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a SWAX cache cannot be rolled back (sliding windows drop old keys, mLSTM "
                                  "states are overwritten)")


class FullAttentionLayer(_AttentionLayer):
    """full_attention layers: every key and value, concatenated along the sequence."""

    is_sliding = False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        B = key_states.shape[0]
        self.keys = key_states[:, :, :0]
        self.values = value_states[:, :, :0]
        self.key_index = torch.empty(B, 0, dtype=torch.long, device=key_states.device)
        self.device = key_states.device
        self.is_initialized = True

    def append(self, key_states, value_states, key_index):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.key_index = torch.cat([self.key_index, key_index], dim=-1)
        self.cumulative_length += key_states.shape[-2]
        return self.keys, self.values, self.key_index

    def get_max_length(self) -> int:
        return -1


class SlidingWindowLayer(_AttentionLayer):
    """sliding_attention layers: a ring buffer of `sliding_window - 1` keys/values per row.

    A query sees `sliding_window` keys counting itself, so the tokens it needs from earlier calls are
    the last `sliding_window - 1`. The token with index t lives in slot t % (sliding_window - 1):
    writing a token overwrites the one `sliding_window - 1` tokens older, which no later query sees."""

    is_sliding = True

    def __init__(self, sliding_window: int):
        super().__init__()
        self.sliding_window = sliding_window
        self.size = sliding_window - 1

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        B, H, _, D = key_states.shape
        self.keys = key_states.new_zeros(B, H, self.size, D)
        self.values = value_states.new_zeros(B, H, self.size, value_states.shape[-1])
        self.key_index = torch.full((B, self.size), -1, dtype=torch.long, device=key_states.device)
        self.device = key_states.device
        self.is_initialized = True

    def append(self, key_states, value_states, key_index):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        # What this call attends to: the ring as it was (a copy, the ring is overwritten below) and
        # the new keys. Queries pick their window out of it by token index.
        attend = (torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2),
                  torch.cat([self.key_index, key_index], dim=-1))
        self.cumulative_length += key_states.shape[-2]
        if self.size == 0:  # window 1: a query sees only itself, nothing to keep
            return attend
        if key_states.shape[-2] == 1 and bool((key_index >= 0).all()):
            # One decoded token per row (every generate() step): one slot per row, without the
            # mask and nonzero() of the general path (half the cost of a decode step's cache work).
            rows = torch.arange(key_index.shape[0], device=key_index.device)
            slot = key_index[:, 0] % self.size
            self.keys[rows, :, slot] = key_states[:, :, 0]
            self.values[rows, :, slot] = value_states[:, :, 0]
            self.key_index[rows, slot] = key_index[:, 0]
            return attend
        # Per row, only the newest `size` tokens of this call survive it (a long prefill writes each
        # slot once: two writes to one slot would race in index_put_).
        newest = key_index.max(dim=-1, keepdim=True).values
        keep = (key_index >= 0) & (key_index > newest - self.size)
        row, pos = keep.nonzero(as_tuple=True)
        slot = key_index[row, pos] % self.size
        self.keys[row, :, slot] = key_states[row, :, pos]
        self.values[row, :, slot] = value_states[row, :, pos]
        self.key_index[row, slot] = key_index[row, pos]
        return attend

    def get_max_length(self) -> int:
        return self.size


class MLSTMLayer:
    """mlstm layers: the state (C [B, NH, dqk, dv], n [B, NH, dqk], m [B, NH]) in float32 (float64 for
    a float64 model), since a recurrent state rounded to bf16 every step drifts. Fixed size."""

    is_sliding = False
    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self):
        self.state: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self.cumulative_length = 0

    @property
    def is_initialized(self) -> bool:
        return self.state is not None

    def update_state(self, state, num_positions: int) -> None:
        self.state = tuple(state)
        self.cumulative_length += num_positions

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return -1

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.state is not None:
            idx = beam_idx.to(self.state[0].device)
            self.state = tuple(s.index_select(0, idx) for s in self.state)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            self.state = tuple(s.repeat_interleave(repeats, dim=0) for s in self.state)

    def reset(self) -> None:
        self.state = None
        self.cumulative_length = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("an mLSTM state cannot be rolled back")

    def offload(self):
        pass

    def prefetch(self):
        pass


def _plain_index(start: int, key_states: torch.Tensor) -> torch.Tensor:
    """Token indices start, start+1, ... for every row (no padding)."""
    B, L = key_states.shape[0], key_states.shape[-2]
    return (start + torch.arange(L, device=key_states.device)).expand(B, L)


class SwaxCache(Cache):
    """One cache layer per model layer, chosen by `config.layer_types`."""

    def __init__(self, config):
        layers = []
        for layer_type in config.layer_types:
            if layer_type == "sliding_attention":
                layers.append(SlidingWindowLayer(config.sliding_window))
            elif layer_type == "full_attention":
                layers.append(FullAttentionLayer())
            elif layer_type == "mlstm":
                layers.append(MLSTMLayer())
            else:
                raise ValueError(f"SwaxCache: unknown layer type {layer_type!r}")
        super().__init__(layers=layers)
        self.seen_positions = 0  # every position consumed, padding included
        self.token_count: Optional[torch.Tensor] = None  # [B] real tokens seen per row

    def advance(self, num_positions: int, token_count: torch.Tensor) -> None:
        """Called by the model once per forward, after its layers."""
        self.seen_positions += num_positions
        self.token_count = token_count

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_positions

    def get_max_length(self, layer_idx: Optional[int] = None) -> int:
        return -1

    @property
    def is_linear(self) -> list[bool]:
        # generate() skips its "slice the inputs past the cache" step for caches made of linear layers
        # only; this cache always knows its length (seen_positions), so that step must run for a pure
        # mLSTM model too.
        return [False] * len(self.layers)

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        layer = self.layers[layer_idx]
        if isinstance(layer, _AttentionLayer):
            return layer.get_mask_sizes(query_length)
        return query_length, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        if self.token_count is not None:
            self.token_count = self.token_count.index_select(0, beam_idx.to(self.token_count.device))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.token_count is not None:
            self.token_count = self.token_count[indices]

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.token_count is not None:
            self.token_count = self.token_count.repeat_interleave(repeats, dim=0)

    def reset(self) -> None:
        super().reset()
        self.seen_positions = 0
        self.token_count = None

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a SWAX cache cannot be rolled back (sliding windows drop old keys, mLSTM "
                                  "states are overwritten)")

    def state_bytes(self) -> dict[str, int]:
        """Bytes held per layer type (tests and benchmarks: S and X stay flat, G grows)."""
        out = {"sliding_attention": 0, "full_attention": 0, "mlstm": 0}
        for layer in self.layers:
            if isinstance(layer, MLSTMLayer):
                tensors, kind = (layer.state or ()), "mlstm"
            else:
                tensors = (layer.keys, layer.values, layer.key_index) if layer.is_initialized else ()
                kind = "sliding_attention" if layer.is_sliding else "full_attention"
            out[kind] += sum(t.numel() * t.element_size() for t in tensors)
        return out


__all__ = ["SwaxCache", "SlidingWindowLayer", "FullAttentionLayer", "MLSTMLayer"]
