"""mLSTM cell ops (xLSTM-7B / mlstm_kernels convention), tensors [B, H, S, D].

- mlstm_recurrent: step loop, the ground truth.
- mlstm_parallel: quadratic form, tests only.
- mlstm_chunkwise: the training path; grad="stopgrad" (default, hand-written backward) or "exact".
- mlstm_step: one token, for generation.
- chunk_size_problem(kernel, chunk_size, seq_length): which chunk sizes each kernel accepts.
"""

from .chunk import mlstm_chunkwise
from .chunk_rules import chunk_size_problem
from .naive import mlstm_parallel, mlstm_recurrent, mlstm_step

__all__ = ["chunk_size_problem", "mlstm_chunkwise", "mlstm_parallel", "mlstm_recurrent", "mlstm_step"]
