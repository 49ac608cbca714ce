"""The paper's model sizes as recipe ModelConfigs (no megatron import: usable for counting).

SWAX-1.4B is 24 layers x 2048 and SWAX-7B 32 layers x 4096, interleaved 1:1 (pattern XS) [paper];
the rest follows the xLSTM-7B block, since the paper body gives no more detail
(research/swax_paper.md section 1): vocabulary 50,304 (GPT-NeoX tokenizer, as xLSTM-7B),
untied embeddings, SwiGLU width round_up(2.667 d, 64), mLSTM head dim 512 for v and 256 for qk
(qk_dim_factor 0.5; 8 heads at 4096 as xLSTM-7B, 4 at 2048), attention heads of 128 channels
(16 at 2048, as the re-implementation S9 reports; 32 at 4096), no GQA.

    1.4B: 1.42e9 parameters     7B: 6.86e9 parameters     (tests/models/test_sizes.py prints them)
"""

from __future__ import annotations

from ..config.schema import MLSTMConfig, ModelConfig

PAPER_VOCAB_SIZE = 50304


def paper_model_config(size: str) -> ModelConfig:
    """ModelConfig of SWAX-1.4B ("1.4B") or SWAX-7B ("7B")."""
    shapes = {"1.4B": (24, 2048, 16, 4), "7B": (32, 4096, 32, 8)}
    if size not in shapes:
        raise ValueError(f"unknown paper size {size!r}; known: {sorted(shapes)}")
    layers, hidden, heads, mlstm_heads = shapes[size]
    return ModelConfig(
        vocab_size=PAPER_VOCAB_SIZE, hidden_size=hidden, num_layers=layers,
        num_attention_heads=heads, num_query_groups=heads,
        ffn_hidden_size=-(-int(round(2.667 * hidden)) // 64) * 64,
        layer_pattern=f"XS*{layers // 2}",
        mlstm=MLSTMConfig(num_heads=mlstm_heads), tie_embeddings=False)
