"""mLSTM cell ops (xLSTM-7B / mlstm_kernels convention), tensors [B, H, S, D].

- mlstm_recurrent: step loop, the ground truth.
- mlstm_parallel: quadratic form, tests only.
- mlstm_chunkwise: the training path; grad="stopgrad" (default, hand-written backward) or "exact".
- mlstm_step: one token, for generation.
- chunk_size_problem(kernel, chunk_size, seq_length): which chunk sizes each kernel accepts.

The kernels load on first use (PEP 562): `chunk_size_problem` is plain Python, read by the recipe
checks without importing torch.
"""

import importlib

from .chunk_rules import chunk_size_problem

_LAZY = {"mlstm_chunkwise": ".chunk", "mlstm_parallel": ".naive", "mlstm_recurrent": ".naive",
         "mlstm_step": ".naive"}
__all__ = ["chunk_size_problem", *sorted(_LAZY)]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
