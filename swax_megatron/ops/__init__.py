"""Kernels: one folder per op, each with a plain reference (naive.py) beside its fast paths.

This package imports nothing else of swax_megatron (models import ops, never the reverse).
"""

from .mlstm import mlstm_chunkwise, mlstm_parallel, mlstm_recurrent, mlstm_step
from .swa import sliding_window_attention

__all__ = ["mlstm_chunkwise", "mlstm_parallel", "mlstm_recurrent", "mlstm_step", "sliding_window_attention"]
