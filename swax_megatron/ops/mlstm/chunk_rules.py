"""Which chunk sizes each chunkwise mLSTM kernel accepts: the one place that says so.

    chunk_size_problem("triton", 48, 4096)   # -> "chunk_size must be a power of two >= 16 ..."
    chunk_size_problem("torch", 48, 4096)    # -> None

The ops call it on every call (and raise ValueError with the reason); a recipe check calls it
with the kernel the recipe will run, so a chunk size no kernel takes is refused before a job
starts instead of at its first GPU step. Plain Python: importing it imports neither torch's
kernels nor triton.

Rules (neither kernel needs the sequence to be a multiple of the chunk: both pad the tail chunk):
  torch   any positive int (chunks longer than the sequence are cut to it)
  triton  a power of two >= 16 (tl.arange sizes and dot tiles are powers of two, >= 16)
  auto    what both take: the model's "auto" runs triton on CUDA and torch elsewhere
"""

from __future__ import annotations

from typing import Optional

KERNELS = ("torch", "triton", "auto")
TRITON_MIN_CHUNK = 16


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def chunk_size_problem(kernel: str, chunk_size: int, seq_length: Optional[int] = None) -> Optional[str]:
    """Why `kernel` ("torch" | "triton" | "auto") cannot run chunks of `chunk_size` over sequences
    of `seq_length` tokens (None: any length), as one line; None when it can. An unknown kernel
    name is a programming error (ValueError), not a problem of the chunk size."""
    if kernel not in KERNELS:
        raise ValueError(f"chunk_size_problem: kernel must be one of {KERNELS}, got {kernel!r}")
    if not _is_int(chunk_size) or chunk_size < 1:
        return f"chunk_size must be a positive int, got {chunk_size!r}"
    if seq_length is not None and (not _is_int(seq_length) or seq_length < 1):
        return f"seq_length must be a positive int, got {seq_length!r}"
    if kernel in ("triton", "auto") and (chunk_size < TRITON_MIN_CHUNK or chunk_size & (chunk_size - 1)):
        lower = 1 << (chunk_size.bit_length() - 1)
        near = (f"{TRITON_MIN_CHUNK}" if chunk_size < TRITON_MIN_CHUNK else f"{lower} or {2 * lower}")
        via = " (kernel 'auto' runs it on CUDA)" if kernel == "auto" else ""
        return (f"chunk_size must be a power of two >= {TRITON_MIN_CHUNK} for the triton mLSTM kernel"
                f"{via}, got {chunk_size} (nearest: {near})")
    return None
