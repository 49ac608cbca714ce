"""Backward kernels of the chunkwise mLSTM under the stop-gradient convention (research/mlstm.md §1.5).

The normaliser DEN and the stabilisers (MT per token, MS per chunk boundary) are constants, so every
output row is linear in q, k, v and the carried state. With dh~_t = dh_t / DEN_t, for chunk c:
  dq~_t  = e_t C_{c-1} dh~_t + sum_{j<=t} D_tj (dh~_t . v_j) k_j             (kernel dq)
  dk_j   = w_j dC_c v_j      + sum_{t>=j} D_tj (dh~_t . v_j) q~_t            (kernel dk)
  dv_j   = w_j dC_c^T k_j    + sum_{t>=j} D_tj (q~_t . k_j) dh~_t            (kernel dv)
  dC_{c-1} = exp(g_c + m_{c-1} - m_c) dC_c + sum_t e_t q~_t dh~_t^T           (kernel state, reverse)
where D_tj = exp(b_t - b_j + i_j - m_t), e_t = exp(b_t + m_{c-1} - m_t), w_j = exp(a_j - m_c).
The gate gradients follow from the identity of §1.5 (each dq/dk program stores its K tile's partial sums):
  di_j = k_j . dk_j ,   d log f_r = sum_{t>=r} q_t . dq_t - sum_{j>=r} k_j . dk_j + <dC_N, C_N> (+ <dn_N, n_N>).
The diagonal pair (t = j) enters q_t.dq_t and k_t.dk_t with the same value, so it is left out of both sums
used for log f (kept for di): with forget gates near 0 it is the only large term and its rounding noise
would swamp the O(exp(-15)) result. A random final-state gradient dC_N in that regime still cancels
<dC_N, C_N> against the last writes' k.dk, so there d log f is accurate to fp32 rounding of those O(1)
terms, not of its own tiny size (the torch path and mlstm_kernels share this).
Layout and dtype roles: see fwd.py.
"""

import triton
import triton.language as tl


@triton.jit
def _bwd_state_kernel(
    Q_ptr, DH_ptr, B_ptr, DEN_ptr, MT_ptr, MS_ptr, DCN_ptr, DCS_ptr, DC0_ptr,
    S, NC, scale,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DCN: tl.constexpr, SDT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """Reverse pass over chunks; DCS[c] is the gradient w.r.t. the state leaving chunk c."""
    pid_k = tl.program_id(0)
    pid_v = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mk = offs_k < DK
    mv = offs_v < DV
    mkv = mk[:, None] & mv[None, :]
    kv_off = offs_k[:, None] * DV + offs_v[None, :]
    q_base = Q_ptr + bh * S * DK
    dh_base = DH_ptr + bh * S * DV
    g_base = B_ptr + bh * NC * L
    ms_base = MS_ptr + bh * (NC + 1)
    dcs_base = DCS_ptr + bh * NC * DK * DV

    if HAS_DCN:
        dC = tl.load(DCN_ptr + bh * DK * DV + kv_off, mask=mkv, other=0.0).to(ACC)
    else:
        dC = tl.zeros([BK, BV], dtype=ACC)

    for cc in range(0, NC):
        c = NC - 1 - cc
        tl.store(dcs_base + c * DK * DV + kv_off, dC, mask=mkv)
        m_in = tl.load(ms_base + c)
        g = tl.load(g_base + c * L + L - 1)
        dC = dC * tl.exp(g + m_in - tl.load(ms_base + c + 1))
        for l0 in range(0, L, BL):
            offs_t = c * L + l0 + tl.arange(0, BL)
            ok = offs_t < S
            b_t = tl.load(g_base + offs_t)
            # DEN/MT of rows past S may never have been written: select, do not multiply.
            coef = tl.where(ok, tl.exp(b_t + m_in - tl.load(MT_ptr + bh * NC * L + offs_t, mask=ok, other=0.0))
                            * scale / tl.load(DEN_ptr + bh * NC * L + offs_t, mask=ok, other=1.0), 0.0)
            qT = tl.load(q_base + offs_t[None, :] * DK + offs_k[:, None], mask=mk[:, None] & ok[None, :], other=0.0)
            dh = tl.load(dh_base + offs_t[:, None] * DV + offs_v[None, :], mask=ok[:, None] & mv[None, :], other=0.0)
            dC = tl.dot((qT.to(ACC) * coef[None, :]).to(SDT), dh.to(SDT), dC, input_precision=PREC, out_dtype=ACC)

    tl.store(DC0_ptr + bh * DK * DV + kv_off, dC, mask=mkv)


@triton.jit
def _bwd_dq_kernel(
    Q_ptr, K_ptr, V_ptr, DH_ptr, B_ptr, I_ptr, CS_ptr, MS_ptr, DEN_ptr, MT_ptr, DQ_ptr, QDQ_ptr,
    S, NC, BH, scale,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DT: tl.constexpr, SDT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    NBL: tl.constexpr = L // BL
    pid_k = tl.program_id(0)
    pid_cq = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    c = pid_cq // NBL
    qi = pid_cq % NBL
    t0 = c * L + qi * BL
    if t0 >= S:
        return
    offs_t = t0 + tl.arange(0, BL)
    ok_t = offs_t < S
    offs_k = pid_k * BK + tl.arange(0, BK)
    mk = offs_k < DK
    k_base = K_ptr + bh * S * DK
    v_base = V_ptr + bh * S * DV
    dh_base = DH_ptr + bh * S * DV
    g_base = B_ptr + bh * NC * L
    i_base = I_ptr + bh * NC * L
    cs_base = CS_ptr + (bh * (NC + 1) + c) * DK * DV

    b_t = tl.load(g_base + offs_t)
    mt_t = tl.load(MT_ptr + bh * NC * L + offs_t)
    den_t = tl.load(DEN_ptr + bh * NC * L + offs_t)
    e_t = tl.exp(b_t + tl.load(MS_ptr + bh * (NC + 1) + c) - mt_t)

    acc = tl.zeros([BL, BK], dtype=ACC)
    for v0 in range(0, DV, BV):
        offs_v = v0 + tl.arange(0, BV)
        mv = offs_v < DV
        dh = tl.load(dh_base + offs_t[:, None] * DV + offs_v[None, :], mask=ok_t[:, None] & mv[None, :], other=0.0)
        cT = tl.load(cs_base + offs_k[None, :] * DV + offs_v[:, None], mask=mk[None, :] & mv[:, None], other=0.0)
        acc = tl.dot(dh.to(SDT), cT.to(SDT), acc, input_precision=PREC, out_dtype=ACC)
    acc = acc * e_t[:, None]

    diag = tl.zeros([BL], dtype=ACC)
    for kj in range(0, qi + 1):
        offs_j = c * L + kj * BL + tl.arange(0, BL)
        ok_j = offs_j < S
        dp = tl.zeros([BL, BL], dtype=ACC)
        for v0 in range(0, DV, BV):
            offs_v = v0 + tl.arange(0, BV)
            mv = offs_v < DV
            dh = tl.load(dh_base + offs_t[:, None] * DV + offs_v[None, :], mask=ok_t[:, None] & mv[None, :], other=0.0)
            vT = tl.load(v_base + offs_j[None, :] * DV + offs_v[:, None], mask=mv[:, None] & ok_j[None, :], other=0.0)
            dp = tl.dot(dh.to(DT), vT.to(DT), dp, input_precision=PREC, out_dtype=ACC)
        val = (b_t[:, None] - tl.load(g_base + offs_j)[None, :]) + tl.load(i_base + offs_j)[None, :]
        dpd = dp * tl.where(offs_t[:, None] >= offs_j[None, :], tl.exp(val - mt_t[:, None]), 0.0)
        diag += tl.sum(tl.where(offs_t[:, None] == offs_j[None, :], dpd, 0.0), axis=1)
        kk = tl.load(k_base + offs_j[:, None] * DK + offs_k[None, :], mask=ok_j[:, None] & mk[None, :], other=0.0)
        dpd = tl.where(offs_t[:, None] > offs_j[None, :], dpd, 0.0)
        acc = tl.dot(dpd.to(DT), kk.to(DT), acc, input_precision=PREC, out_dtype=ACC)

    # q.dq without the j = t term: that term equals its twin in k.dk and would only add rounding noise
    # of the size of the largest term to the log f gradient, which is a difference of the two sums.
    rs = (scale / den_t)[:, None]
    ptr_off = bh * S * DK + offs_t[:, None] * DK + offs_k[None, :]
    m2 = ok_t[:, None] & mk[None, :]
    qq = tl.load(Q_ptr + ptr_off, mask=m2, other=0.0).to(ACC)
    kt = tl.load(K_ptr + ptr_off, mask=m2, other=0.0).to(ACC)
    tl.store(QDQ_ptr + (pid_k * BH + bh) * NC * L + offs_t, tl.sum(qq * acc * rs, axis=1))
    dq = (acc + diag[:, None] * kt) * rs
    tl.store(DQ_ptr + ptr_off, dq.to(DQ_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _bwd_dk_kernel(
    Q_ptr, K_ptr, V_ptr, DH_ptr, B_ptr, I_ptr, DCS_ptr, MS_ptr, DEN_ptr, MT_ptr, DK_ptr, KDK_ptr, KDKD_ptr,
    S, NC, BH, scale,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DT: tl.constexpr, SDT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    NBL: tl.constexpr = L // BL
    pid_k = tl.program_id(0)
    pid_cj = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    c = pid_cj // NBL
    kj = pid_cj % NBL
    j0 = c * L + kj * BL
    if j0 >= S:
        return
    offs_j = j0 + tl.arange(0, BL)
    ok_j = offs_j < S
    offs_k = pid_k * BK + tl.arange(0, BK)
    mk = offs_k < DK
    q_base = Q_ptr + bh * S * DK
    v_base = V_ptr + bh * S * DV
    dh_base = DH_ptr + bh * S * DV
    g_base = B_ptr + bh * NC * L
    i_base = I_ptr + bh * NC * L
    dcs_base = DCS_ptr + (bh * NC + c) * DK * DV

    b_j = tl.load(g_base + offs_j)
    i_j = tl.load(i_base + offs_j)
    g = tl.load(g_base + c * L + L - 1)
    w_j = tl.exp((g - b_j) + i_j - tl.load(MS_ptr + bh * (NC + 1) + c + 1))

    acc = tl.zeros([BL, BK], dtype=ACC)
    for v0 in range(0, DV, BV):
        offs_v = v0 + tl.arange(0, BV)
        mv = offs_v < DV
        vv = tl.load(v_base + offs_j[:, None] * DV + offs_v[None, :], mask=ok_j[:, None] & mv[None, :], other=0.0)
        dcT = tl.load(dcs_base + offs_k[None, :] * DV + offs_v[:, None], mask=mk[None, :] & mv[:, None], other=0.0)
        acc = tl.dot(vv.to(SDT), dcT.to(SDT), acc, input_precision=PREC, out_dtype=ACC)
    acc = acc * w_j[:, None]

    diag = tl.zeros([BL], dtype=ACC)
    n_q = tl.minimum(NBL, tl.cdiv(S - c * L, BL))  # query blocks of this chunk holding real rows
    for qi in range(kj, n_q):
        offs_t = c * L + qi * BL + tl.arange(0, BL)
        ok_t = offs_t < S
        dpT = tl.zeros([BL, BL], dtype=ACC)
        for v0 in range(0, DV, BV):
            offs_v = v0 + tl.arange(0, BV)
            mv = offs_v < DV
            vv = tl.load(v_base + offs_j[:, None] * DV + offs_v[None, :], mask=ok_j[:, None] & mv[None, :], other=0.0)
            dhT = tl.load(dh_base + offs_t[None, :] * DV + offs_v[:, None], mask=mv[:, None] & ok_t[None, :], other=0.0)
            dpT = tl.dot(vv.to(DT), dhT.to(DT), dpT, input_precision=PREC, out_dtype=ACC)
        b_t = tl.load(g_base + offs_t)
        mt_t = tl.load(MT_ptr + bh * NC * L + offs_t)
        den_t = tl.load(DEN_ptr + bh * NC * L + offs_t)
        valT = (b_t[None, :] - b_j[:, None]) + i_j[:, None]
        dT = tl.where(offs_t[None, :] >= offs_j[:, None], tl.exp(valT - mt_t[None, :]), 0.0)
        a = dpT * dT * (scale / den_t)[None, :]
        diag += tl.sum(tl.where(offs_t[None, :] == offs_j[:, None], a, 0.0), axis=1)
        a = tl.where(offs_t[None, :] > offs_j[:, None], a, 0.0)
        qq = tl.load(q_base + offs_t[:, None] * DK + offs_k[None, :], mask=ok_t[:, None] & mk[None, :], other=0.0)
        acc = tl.dot(a.to(DT), qq.to(DT), acc, input_precision=PREC, out_dtype=ACC)

    # k.dk without the t = j term (see the dq kernel) for log f; the term itself goes to KDKD for i.
    ptr_off = bh * S * DK + offs_j[:, None] * DK + offs_k[None, :]
    m2 = ok_j[:, None] & mk[None, :]
    kk = tl.load(K_ptr + ptr_off, mask=m2, other=0.0).to(ACC)
    qj = tl.load(Q_ptr + ptr_off, mask=m2, other=0.0).to(ACC)
    part = (pid_k * BH + bh) * NC * L + offs_j
    tl.store(KDK_ptr + part, tl.sum(kk * acc, axis=1))
    tl.store(KDKD_ptr + part, diag * tl.sum(kk * qj, axis=1))
    dk = acc + diag[:, None] * qj
    tl.store(DK_ptr + ptr_off, dk.to(DK_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _bwd_dv_kernel(
    Q_ptr, K_ptr, DH_ptr, B_ptr, I_ptr, DCS_ptr, MS_ptr, DEN_ptr, MT_ptr, DV_ptr,
    S, NC, scale,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DT: tl.constexpr, SDT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    NBL: tl.constexpr = L // BL
    pid_v = tl.program_id(0)
    pid_cj = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    c = pid_cj // NBL
    kj = pid_cj % NBL
    j0 = c * L + kj * BL
    if j0 >= S:
        return
    offs_j = j0 + tl.arange(0, BL)
    ok_j = offs_j < S
    offs_v = pid_v * BV + tl.arange(0, BV)
    mv = offs_v < DV
    q_base = Q_ptr + bh * S * DK
    k_base = K_ptr + bh * S * DK
    dh_base = DH_ptr + bh * S * DV
    g_base = B_ptr + bh * NC * L
    i_base = I_ptr + bh * NC * L
    dcs_base = DCS_ptr + (bh * NC + c) * DK * DV

    b_j = tl.load(g_base + offs_j)
    i_j = tl.load(i_base + offs_j)
    g = tl.load(g_base + c * L + L - 1)
    w_j = tl.exp((g - b_j) + i_j - tl.load(MS_ptr + bh * (NC + 1) + c + 1))

    acc = tl.zeros([BL, BV], dtype=ACC)
    for k0 in range(0, DK, BK):
        offs_k = k0 + tl.arange(0, BK)
        mk = offs_k < DK
        kk = tl.load(k_base + offs_j[:, None] * DK + offs_k[None, :], mask=ok_j[:, None] & mk[None, :], other=0.0)
        dc = tl.load(dcs_base + offs_k[:, None] * DV + offs_v[None, :], mask=mk[:, None] & mv[None, :], other=0.0)
        acc = tl.dot(kk.to(SDT), dc.to(SDT), acc, input_precision=PREC, out_dtype=ACC)
    acc = acc * w_j[:, None]

    n_q = tl.minimum(NBL, tl.cdiv(S - c * L, BL))
    for qi in range(kj, n_q):
        offs_t = c * L + qi * BL + tl.arange(0, BL)
        ok_t = offs_t < S
        pT = tl.zeros([BL, BL], dtype=ACC)
        for k0 in range(0, DK, BK):
            offs_k = k0 + tl.arange(0, BK)
            mk = offs_k < DK
            kk = tl.load(k_base + offs_j[:, None] * DK + offs_k[None, :], mask=ok_j[:, None] & mk[None, :], other=0.0)
            qT = tl.load(q_base + offs_t[None, :] * DK + offs_k[:, None], mask=mk[:, None] & ok_t[None, :], other=0.0)
            pT = tl.dot(kk.to(DT), qT.to(DT), pT, input_precision=PREC, out_dtype=ACC)
        b_t = tl.load(g_base + offs_t)
        mt_t = tl.load(MT_ptr + bh * NC * L + offs_t)
        den_t = tl.load(DEN_ptr + bh * NC * L + offs_t)
        valT = (b_t[None, :] - b_j[:, None]) + i_j[:, None]
        dT = tl.where(offs_t[None, :] >= offs_j[:, None], tl.exp(valT - mt_t[None, :]), 0.0)
        a = pT * dT * (scale / den_t)[None, :]
        dh = tl.load(dh_base + offs_t[:, None] * DV + offs_v[None, :], mask=ok_t[:, None] & mv[None, :], other=0.0)
        acc = tl.dot(a.to(DT), dh.to(DT), acc, input_precision=PREC, out_dtype=ACC)

    tl.store(DV_ptr + bh * S * DV + offs_j[:, None] * DV + offs_v[None, :], acc.to(DV_ptr.dtype.element_ty),
             mask=ok_j[:, None] & mv[None, :])
