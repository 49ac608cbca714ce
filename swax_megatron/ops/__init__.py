"""Kernels: one folder per op, each with a plain reference (naive.py) beside its fast paths.

This package imports nothing else of swax_megatron (models import ops, never the reverse). The
kernels load on first use (PEP 562), so the recipe checks can read an op's plain-Python
declaration of what it accepts (`ops.mlstm.chunk_rules`) without importing torch.
"""

import importlib

_LAZY = {"mlstm_chunkwise": ".mlstm", "mlstm_parallel": ".mlstm", "mlstm_recurrent": ".mlstm",
         "mlstm_step": ".mlstm", "sliding_window_attention": ".swa"}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
