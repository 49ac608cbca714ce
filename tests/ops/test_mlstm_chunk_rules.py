"""One statement of which chunk sizes each mLSTM kernel accepts (ops/mlstm/chunk_rules.py), and the
ops refusing exactly those chunk sizes with its reason: a recipe check that asks
chunk_size_problem(kernel, ...) then refuses what the kernel would refuse at its first step."""

import pytest
import torch
from ops_testing import mlstm_inputs

from swax_megatron.ops.mlstm import chunk_size_problem, mlstm_chunkwise

SIZES = [1, 2, 8, 15, 16, 17, 24, 32, 48, 64, 96, 100, 128, 256, 1024]
BAD = [0, -16, True, 16.0, "64", None]


@pytest.mark.parametrize("size", SIZES)
def test_rules(size):
    power_of_two = size & (size - 1) == 0
    assert chunk_size_problem("torch", size, 100) is None  # the torch path pads the tail chunk
    assert (chunk_size_problem("triton", size, 100) is None) == (power_of_two and size >= 16)
    # "auto" runs triton on CUDA, torch elsewhere: it takes what both take
    assert (chunk_size_problem("auto", size) is None) == (chunk_size_problem("triton", size) is None)


def test_messages_are_one_line_reasons():
    assert chunk_size_problem("triton", 48, 4096) == (
        "chunk_size must be a power of two >= 16 for the triton mLSTM kernel, got 48 (nearest: 32 or 64)")
    assert "(nearest: 16)" in chunk_size_problem("triton", 8)
    assert "kernel 'auto' runs it on CUDA" in chunk_size_problem("auto", 48, 4096)
    for kernel in ("torch", "triton", "auto"):
        for bad in BAD:
            assert chunk_size_problem(kernel, bad, 64) == f"chunk_size must be a positive int, got {bad!r}"
        assert chunk_size_problem(kernel, 64, 0) == "seq_length must be a positive int, got 0"
    with pytest.raises(ValueError, match="kernel must be one of"):
        chunk_size_problem("cuda", 64, 64)


@pytest.mark.parametrize("size", SIZES[:8] + BAD)
def test_torch_op_refuses_exactly_what_the_rule_refuses(size):
    x = mlstm_inputs(1, 2, 37, 4, 6, dtype=torch.float32)
    problem = chunk_size_problem("torch", size, 37)
    if problem is None:
        h, _ = mlstm_chunkwise(*x, chunk_size=size)
        assert h.shape == (1, 2, 37, 6)
    else:
        with pytest.raises(ValueError) as e:
            mlstm_chunkwise(*x, chunk_size=size)
        assert str(e.value) == f"mlstm_chunkwise: {problem}"


def test_triton_op_refuses_exactly_what_the_rule_refuses():
    pytest.importorskip("triton")
    from swax_megatron.ops.mlstm.triton import INTERPRET, mlstm_chunkwise_triton

    x = mlstm_inputs(1, 2, 37, 4, 6, dtype=torch.float32)
    for size in SIZES + BAD:
        problem = chunk_size_problem("triton", size, 37)
        if problem is None:
            # past the chunk check, the next one: CPU tensors without the interpreter
            expected = (RuntimeError, "TRITON_INTERPRET") if not INTERPRET else None
        else:
            expected = (ValueError, f"mlstm_chunkwise_triton: {problem}")
        if expected is None:
            continue
        with pytest.raises(expected[0]) as e:
            mlstm_chunkwise_triton(*x, chunk_size=size)
        assert expected[1] in str(e.value), (size, str(e.value))
