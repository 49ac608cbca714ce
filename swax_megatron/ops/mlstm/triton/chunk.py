"""Chunkwise mLSTM in Triton: launchers, block-size heuristics, autograd Function, public entry.

Same cell, signature and state convention as `swax_megatron.ops.mlstm.mlstm_chunkwise`; the backward
is the stop-gradient one (normaliser and stabiliser constant, as ops/mlstm/chunk.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .bwd import _bwd_dk_kernel, _bwd_dq_kernel, _bwd_dv_kernel, _bwd_state_kernel
from .fwd import _fwd_out_kernel, _fwd_state_kernel

# @triton.jit reads TRITON_INTERPRET when the kernels are defined, i.e. when this module is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
             torch.float64: tl.float64}


def _p2(x: int) -> int:
    return max(16, triton.next_power_of_2(int(x)))


@dataclass(frozen=True)
class Blocks:
    """Tiling of one call. L: chunk length actually used; BL: rows per inner block (TFLA's second level);
    BK_S/BV_S: head-dim tiles of the two sequential state kernels; BK/BV: those of the parallel kernels."""

    L: int
    BL: int
    BK_S: int
    BV_S: int
    BK: int
    BV: int
    warps_state: int
    warps_par: int
    stages: int


# GPU tiling per input dtype: (BL, BK_S, BV_S, BK, BV, warps). Each row is the largest tried that
# compiles without register spills for sm_90 and sm_80 at the xLSTM-7B heads (256 x 512) and at small
# ragged heads (bench/gpu_check.py --aot fails on any spill). fp32 runs its dots as tf32x3 (each operand
# split in two tf32 halves, three MMAs), so its tiles hold twice the registers: at the bf16 tiling sm_90
# spilled up to 268 B per thread and sm_80 38 KB; 32-wide tiles are the first that spill nowhere.
# fp16 keeps its state dots in fp32 (states can leave the fp16 range): 64 x 64 state tiles spilled 24 B
# on sm_80 there.
_GPU_TILES = {
    torch.bfloat16: (64, 64, 64, 64, 128, 8),
    torch.float16: (64, 64, 32, 64, 128, 8),
    torch.float32: (32, 32, 32, 32, 32, 4),
}


def pick_blocks(S: int, DK: int, DV: int, chunk_size: int, interpret: bool, block_l: int | None = None,
                block_k: int | None = None, block_v: int | None = None, num_warps: int | None = None,
                num_stages: int | None = None, dtype: torch.dtype = torch.bfloat16) -> Blocks:
    """Heuristic tiling (no autotuning, no device query); the keyword arguments override it.

    The interpreter runs each program instance as numpy code, so there the fewest, largest tiles win.
    On a GPU, per input dtype (_GPU_TILES): for bf16, 64-row inner blocks, 8 warps, 64 x 64 state tiles,
    and for the parallel kernels 64-wide K tiles and 128-wide V tiles (fewer recomputations of q k^T in
    the forward and dv kernels); smaller tiles for fp16 state kernels and for fp32. Compiled for sm_90 /
    sm_80 at the xLSTM-7B heads (256 x 512) no kernel spills registers in any dtype (bench/gpu_check.py
    --aot checks it); float64 (tests only) takes the fp32 tiles. Speed is unmeasured here:
    bench/gpu_check.py --sweep times alternatives."""
    L = min(chunk_size, _p2(S))  # a chunk longer than the (power-of-two rounded) sequence only adds padding
    if interpret:
        BL = min(L, 64)
        BK_S = BK = min(_p2(DK), 256)
        BV_S = BV = min(_p2(DV), 512)
        warps = 8
    else:
        BL, BK_S, BV_S, BK, BV, warps = _GPU_TILES.get(dtype, _GPU_TILES[torch.float32])
        BL = min(L, BL)
        BK_S, BK = min(_p2(DK), BK_S), min(_p2(DK), BK)
        BV_S, BV = min(_p2(DV), BV_S), min(_p2(DV), BV)
    if block_l is not None:
        BL = min(L, block_l)
    if block_k is not None:
        BK_S = BK = min(_p2(DK), block_k)
    if block_v is not None:
        BV_S = BV = min(_p2(DV), block_v)
    for name, val in (("block_l", BL), ("block_k", BK), ("block_v", BV)):
        if val < 16 or val & (val - 1):
            raise ValueError(f"mlstm_chunkwise_triton: {name} must be a power of two >= 16, got {val}")
    warps = warps if num_warps is None else num_warps
    stages = 2 if num_stages is None else num_stages
    return Blocks(L, BL, BK_S, BV_S, BK, BV, warps, warps, stages)


def _dtypes(dtype: torch.dtype, interpret: bool):
    """(ACC, DT, SDT, PREC): accumulation dtype, dot dtype for input operands, dot dtype for state operands."""
    if dtype == torch.float64:
        return tl.float64, tl.float64, tl.float64, "ieee"
    if dtype == torch.float32:
        # GPU: three-pass TF32 keeps fp32-level accuracy on tensor cores; plain "ieee" fp32 dots fall back to
        # FMA code that spills kilobytes of registers (ptxas, sm_90). The interpreter computes in fp32 anyway.
        return tl.float32, tl.float32, tl.float32, "ieee" if interpret else "tf32x3"
    if dtype == torch.bfloat16:
        if interpret:  # the interpreter multiplies bf16 bit patterns (triton#11584): upcast there
            return tl.float32, tl.float32, tl.float32, "ieee"
        return tl.float32, tl.bfloat16, tl.bfloat16, "tf32"
    # fp16: states and state gradients can exceed 65504, so their dots stay in fp32 (tf32 on GPU).
    return tl.float32, tl.float16, tl.float32, "ieee" if interpret else "tf32"


def _gate_buffers(i: torch.Tensor, f: torch.Tensor, L: int, NC: int, acc: torch.dtype):
    """b (in-chunk inclusive cumsum of logsigmoid(f)) and ig, padded to NC*L and flattened to [BH, NC*L]."""
    B, H, S = i.shape
    pad = NC * L - S
    logf = F.logsigmoid(f.to(acc))
    ig = i.to(acc)
    if pad:
        logf = F.pad(logf, (0, pad), value=0.0)
        ig = F.pad(ig, (0, pad), value=float("-inf"))
    b = logf.reshape(B * H, NC, L).cumsum(-1).reshape(B * H, NC * L).contiguous()
    return b, ig.reshape(B * H, NC * L).contiguous()


def _torch_dtype(t):
    return {tl.float16: torch.float16, tl.bfloat16: torch.bfloat16, tl.float32: torch.float32,
            tl.float64: torch.float64}[t]


def _masks(S: int, DK: int, DV: int, L: int, BK: int, BV: int) -> dict:
    return dict(MASK_S=S % L != 0, MASK_K=DK % BK != 0, MASK_V=DV % BV != 0)


def _forward(q, k, v, b, ig, C0, n0, m0, S, NC, blk: Blocks, eps: float):
    """Returns h [BH,S,DV], CS, CN, NS, MS, DEN, MT (see fwd.py for the layout)."""
    BH, _, DK = q.shape
    DV = v.shape[-1]
    dev = q.device
    ACC, DT, SDT, PREC = _dtypes(q.dtype, INTERPRET)
    acc_t = b.dtype
    CS = torch.empty(BH, NC, DK, DV, dtype=_torch_dtype(SDT), device=dev)
    CN = torch.empty(BH, DK, DV, dtype=acc_t, device=dev)
    NS = torch.empty(BH, NC + 1, DK, dtype=acc_t, device=dev)
    MS = torch.empty(BH, NC + 1, dtype=acc_t, device=dev)
    has_init = C0 is not None
    if m0 is None:
        m0 = torch.zeros(BH, dtype=acc_t, device=dev)
    grid = (triton.cdiv(DK, blk.BK_S), triton.cdiv(DV, blk.BV_S), BH)
    _fwd_state_kernel[grid](
        k, v, b, ig, C0 if has_init else CN, n0 if has_init else NS, m0, CS, CN, NS, MS, S, NC,
        DK=DK, DV=DV, L=blk.L, BL=blk.BL, BK=blk.BK_S, BV=blk.BV_S, **_masks(S, DK, DV, blk.L, blk.BK_S, blk.BV_S),
        HAS_INIT=has_init, DT=DT, ACC=ACC, PREC=PREC, num_warps=blk.warps_state, num_stages=blk.stages,
    )
    h = torch.empty(BH, S, DV, dtype=q.dtype, device=dev)
    DEN = torch.empty(BH, NC * blk.L, dtype=acc_t, device=dev)
    MT = torch.empty(BH, NC * blk.L, dtype=acc_t, device=dev)
    grid = (triton.cdiv(DV, blk.BV), NC * (blk.L // blk.BL), BH)
    _fwd_out_kernel[grid](
        q, k, v, b, ig, CS, NS, MS, h, DEN, MT, S, NC, DK ** -0.5, eps,
        DK=DK, DV=DV, L=blk.L, BL=blk.BL, BK=blk.BK, BV=blk.BV, **_masks(S, DK, DV, blk.L, blk.BK, blk.BV),
        DT=DT, SDT=SDT, ACC=ACC, PREC=PREC, num_warps=blk.warps_par, num_stages=blk.stages,
    )
    return h, CS, CN, NS, MS, DEN, MT


def _backward(q, k, v, dh, b, ig, CS, MS, DEN, MT, dCN, S, NC, blk: Blocks):
    """Returns dq, dk, dv (input dtype); per token [BH, S]: q.dq and k.dk without the diagonal (t = j) term
    of the intra-chunk sums, and that term; dC0 [BH, DK, DV]."""
    BH, _, DK = q.shape
    DV = v.shape[-1]
    dev = q.device
    ACC, DT, SDT, PREC = _dtypes(q.dtype, INTERPRET)
    acc_t = b.dtype
    scale = DK ** -0.5
    DCS = torch.empty(BH, NC, DK, DV, dtype=_torch_dtype(SDT), device=dev)
    dC0 = torch.empty(BH, DK, DV, dtype=acc_t, device=dev)
    has_dcn = dCN is not None
    grid = (triton.cdiv(DK, blk.BK_S), triton.cdiv(DV, blk.BV_S), BH)
    _bwd_state_kernel[grid](
        q, dh, b, DEN, MT, MS, dCN if has_dcn else dC0, DCS, dC0, S, NC, scale,
        DK=DK, DV=DV, L=blk.L, BL=blk.BL, BK=blk.BK_S, BV=blk.BV_S, **_masks(S, DK, DV, blk.L, blk.BK_S, blk.BV_S),
        HAS_DCN=has_dcn, SDT=SDT, ACC=ACC, PREC=PREC, num_warps=blk.warps_state, num_stages=blk.stages,
    )
    nblk = NC * (blk.L // blk.BL)
    NK = triton.cdiv(DK, blk.BK)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    QDQ, KDK, KDKD = (torch.empty(NK, BH, NC * blk.L, dtype=acc_t, device=dev) for _ in range(3))
    common = dict(DK=DK, DV=DV, L=blk.L, BL=blk.BL, BK=blk.BK, BV=blk.BV, **_masks(S, DK, DV, blk.L, blk.BK, blk.BV),
                  DT=DT, SDT=SDT, ACC=ACC, PREC=PREC, num_warps=blk.warps_par, num_stages=blk.stages)
    _bwd_dq_kernel[(NK, nblk, BH)](q, k, v, dh, b, ig, CS, MS, DEN, MT, dq, QDQ, S, NC, BH, scale, **common)
    _bwd_dk_kernel[(NK, nblk, BH)](q, k, v, dh, b, ig, DCS, MS, DEN, MT, dk, KDK, KDKD, S, NC, BH, scale,
                                   **common)
    _bwd_dv_kernel[(triton.cdiv(DV, blk.BV), nblk, BH)](q, k, dh, b, ig, DCS, MS, DEN, MT, dv, S, NC, scale,
                                                        **common)
    return dq, dk, dv, QDQ.sum(0)[:, :S], KDK.sum(0)[:, :S], KDKD.sum(0)[:, :S], dC0


class _MLSTMChunkwiseTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, chunk_size, eps, tiling):
        B, H, S, DK = q.shape
        DV = v.shape[-1]
        BH = B * H
        blk = pick_blocks(S, DK, DV, chunk_size, INTERPRET, dtype=q.dtype, **tiling)
        NC = triton.cdiv(S, blk.L)
        acc_t = torch.float64 if q.dtype == torch.float64 else torch.float32
        q3, k3, v3 = (t.reshape(BH, S, t.shape[-1]).contiguous() for t in (q, k, v))
        b, ig = _gate_buffers(i, f, blk.L, NC, acc_t)
        if C0 is not None:
            C0 = C0.reshape(BH, DK, DV).to(acc_t).contiguous()
            n0 = n0.reshape(BH, DK).to(acc_t).contiguous()
            m0 = m0.reshape(BH).to(acc_t).contiguous()
        h, CS, C_N, NS, MS, DEN, MT = _forward(q3, k3, v3, b, ig, C0, n0, m0, S, NC, blk, eps)
        n_N = NS[:, NC].clone()
        m_N = MS[:, NC].clone()
        ctx.save_for_backward(q3, k3, v3, f, b, ig, CS, MS, DEN, MT, C_N, n_N, C0, n0)
        ctx.meta = (B, H, S, NC, blk, C0 is not None, i.dtype, f.dtype)
        ctx.mark_non_differentiable(m_N)
        ctx.set_materialize_grads(False)
        return (h.view(B, H, S, DV), C_N.view(B, H, DK, DV), n_N.view(B, H, DK), m_N.view(B, H))

    @staticmethod
    def backward(ctx, dh, dC_N, dn_N, _dm_N):
        q3, k3, v3, f, b, ig, CS, MS, DEN, MT, C_N, n_N, C0, n0 = ctx.saved_tensors
        B, H, S, NC, blk, has_init, i_dtype, f_dtype = ctx.meta
        BH, _, DK = q3.shape
        DV = v3.shape[-1]
        acc_t = b.dtype
        if dh is None:
            dh = torch.zeros(BH, S, DV, dtype=q3.dtype, device=q3.device)
        dh = dh.reshape(BH, S, DV).to(q3.dtype).contiguous()
        dCN = None if dC_N is None else dC_N.reshape(BH, DK, DV).to(acc_t).contiguous()
        dq, dk, dv, qdq, kdk, kdk_diag, dC0 = _backward(q3, k3, v3, dh, b, ig, CS, MS, DEN, MT, dCN, S, NC, blk)

        # The log f gradient picks up <dC_N, C_N> (+ <dn_N, n_N>): scaling every write up to step r and the
        # carried-in state by exp(delta) is what adding delta to log f_r does to the final state.
        tail = torch.zeros(BH, dtype=acc_t, device=q3.device)
        if dCN is not None:
            tail += (dCN * C_N).sum((-2, -1))
        dn0 = None
        if dn_N is not None:
            # n enters no output under the stop-gradient convention except the returned final n:
            # n_N = exp(G + m0 - m_N) n0 + sum_j exp(F_Nj + i_j - m_N) k_j, added here in torch.
            dnN = dn_N.reshape(BH, DK).to(acc_t)
            L = blk.L
            g = b.view(BH, NC, L)[:, :, -1]
            g_after = g.flip(-1).cumsum(-1).flip(-1) - g  # sum of chunk decays after chunk c
            m_N = MS[:, NC]
            a = (g[:, :, None] - b.view(BH, NC, L)) + ig.view(BH, NC, L)
            w = torch.exp(a + g_after[:, :, None] - m_N[:, None, None]).reshape(BH, NC * L)[:, :S]
            dk_n = w[:, :, None] * dnN[:, None, :]
            kdk = kdk + (k3.to(acc_t) * dk_n).sum(-1)
            dk = (dk.to(acc_t) + dk_n).to(k3.dtype)
            tail += (dnN * n_N).sum(-1)
            if has_init:
                dn0 = (dnN * torch.exp(g.sum(-1) + MS[:, 0] - m_N)[:, None]).view(B, H, DK)
        di = kdk + kdk_diag
        dlogf = (qdq - kdk).flip(-1).cumsum(-1).flip(-1) + tail[:, None]
        df = dlogf * torch.sigmoid(-f.reshape(BH, S).to(acc_t))
        dC0_out = dm0 = None
        if has_init:
            dC0_out = dC0.view(B, H, DK, DV)
            # m0 only rescales the carried (C0, n0): exp(m0 - m_1) multiplies both in the first step.
            dm0 = (dC0 * C0).sum((-2, -1))
            if dn0 is not None:
                dm0 = dm0 + (dn0.reshape(BH, DK) * n0).sum(-1)
            dm0 = dm0.view(B, H)
        return (dq.view(B, H, S, DK), dk.view(B, H, S, DK), dv.view(B, H, S, DV),
                di.view(B, H, S).to(i_dtype), df.view(B, H, S).to(f_dtype),
                dC0_out, dn0, dm0, None, None, None)


def _check(q, k, v, i, f, chunk_size, initial_state, eps, grad):
    from .._common import check_eps, check_sequence_inputs, check_state
    from ..chunk_rules import chunk_size_problem

    B, H, S, DK, DV = check_sequence_inputs(q, k, v, i, f)
    check_eps(eps)
    if grad == "exact":
        raise NotImplementedError(
            "mlstm_chunkwise_triton: grad='exact' (plain autograd through the normaliser and stabiliser) has no "
            "Triton kernel; use swax_megatron.ops.mlstm.mlstm_chunkwise(..., grad='exact')")
    if grad != "stopgrad":
        raise ValueError(f"mlstm_chunkwise_triton: grad must be 'stopgrad' or 'exact', got {grad!r}")
    problem = chunk_size_problem("triton", chunk_size, S)
    if problem:
        raise ValueError(f"mlstm_chunkwise_triton: {problem}")
    if q.dtype not in _TL_DTYPE or any(t.dtype != q.dtype for t in (k, v)):
        raise TypeError("mlstm_chunkwise_triton: q, k, v must share one dtype among float16, bfloat16, float32, "
                        f"float64; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device.type == "cpu" and not INTERPRET:
        raise RuntimeError("mlstm_chunkwise_triton: CPU tensors need TRITON_INTERPRET=1 set before the kernels are "
                           "imported; on CPU use swax_megatron.ops.mlstm.mlstm_chunkwise")
    if initial_state is not None:
        check_state(initial_state, B, H, DK, DV)
        if any(t.device != q.device for t in initial_state):
            raise ValueError(f"mlstm_chunkwise_triton: initial_state must be on {q.device}")
    return B, H, S, DK, DV


def mlstm_chunkwise_triton(q, k, v, i, f, chunk_size=64, initial_state=None, eps=1e-6, grad="stopgrad", *,
                           block_l=None, block_k=None, block_v=None, num_warps=None, num_stages=None):
    """Chunkwise mLSTM (Triton forward and stop-gradient backward).

    q, k [B, H, S, Dqk]; v [B, H, S, Dv]; i, f gate pre-activations [B, H, S] (input gate exp(i), forget gate
    sigmoid(f) used as logsigmoid(f)). q is scaled by Dqk**-0.5 inside. Any S (the tail chunk is masked).
    initial_state (C [B,H,Dqk,Dv], n [B,H,Dqk], m [B,H]) or None (zeros, m = 0).
    Returns h [B, H, S, Dv] in q's dtype and the final state (C, n, m) in float32 (float64 for float64 inputs).
    chunk_size: power of two >= 16 (chunk_size_problem("triton", ...)); chunks above 64 are tiled in blocks
    of 64 rows (TFLA's second level).
    block_l / block_k / block_v / num_warps / num_stages override the heuristic tiling of `pick_blocks`
    (tests use them to exercise every path, bench/gpu_check.py to try a few GPU settings).
    Gradients flow to q, k, v, i, f and to the initial C, n and m (m0 rescales the carried state); the
    normaliser and every stabiliser computed inside are constants (stop-gradient convention), so the
    returned final m carries no gradient.
    """
    _check(q, k, v, i, f, chunk_size, initial_state, eps, grad)
    C0 = n0 = m0 = None
    if initial_state is not None:
        C0, n0, m0 = initial_state
    tiling = dict(block_l=block_l, block_k=block_k, block_v=block_v, num_warps=num_warps, num_stages=num_stages)
    h, C, n, m = _MLSTMChunkwiseTriton.apply(q, k, v, i, f, C0, n0, m0, chunk_size, float(eps), tiling)
    return h, (C, n, m)
