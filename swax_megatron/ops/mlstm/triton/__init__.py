"""Triton chunkwise mLSTM (forward and stop-gradient backward), TFLA-style two-level tiling.

Importing this package imports triton; set TRITON_INTERPRET=1 before the import to run the kernels on CPU
tensors (tests only: slow). On CPU the torch path `swax_megatron.ops.mlstm.mlstm_chunkwise` is the fast one.
"""

from .chunk import INTERPRET, mlstm_chunkwise_triton, pick_blocks

__all__ = ["mlstm_chunkwise_triton", "pick_blocks", "INTERPRET"]
