"""Backward kernels of the chunkwise mLSTM under the stop-gradient convention (normaliser and
stabiliser constant in backward, the convention of mlstm_kernels and of ops/mlstm/chunk.py).

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

from .fwd import decay_block, load_tile, store_tile


@triton.jit
def _bwd_state_kernel(
    Q_ptr, DH_ptr, B_ptr, DEN_ptr, MT_ptr, MS_ptr, DCN_ptr, DCS_ptr, DC0_ptr,
    S, NC, scale,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    MASK_S: tl.constexpr, MASK_K: tl.constexpr, MASK_V: tl.constexpr,
    HAS_DCN: tl.constexpr, SDT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """Reverse pass over chunks; DCS[c] is the gradient w.r.t. the state leaving chunk c."""
    pid_k = tl.program_id(0)
    pid_v = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    ar_l = tl.arange(0, BL)
    ar_k = tl.arange(0, BK)
    ar_v = tl.arange(0, BV)
    mk = pid_k * BK + ar_k < DK
    mv = pid_v * BV + ar_v < DV
    qT_off = ar_l[None, :] * DK + ar_k[:, None]
    dh_off = ar_l[:, None] * DV + ar_v[None, :]
    kv_off = ar_k[:, None] * DV + ar_v[None, :]
    tile = pid_k * BK * DV + pid_v * BV
    q_base = Q_ptr + bh * S * DK + pid_k * BK
    dh_base = DH_ptr + bh * S * DV + pid_v * BV
    g_base = B_ptr + bh * NC * L
    ms_base = MS_ptr + bh * (NC + 1)
    dcs_base = DCS_ptr + bh * NC * DK * DV + tile

    if HAS_DCN:
        dC = load_tile(DCN_ptr + bh * DK * DV + tile + kv_off, mk, mv, MASK_K, MASK_V).to(ACC)
    else:
        dC = tl.zeros([BK, BV], dtype=ACC)

    for cc in range(0, NC):
        c = NC - 1 - cc
        store_tile(dcs_base + c * DK * DV + kv_off, dC.to(DCS_ptr.dtype.element_ty), mk, mv, MASK_K, MASK_V)
        m_in = tl.load(ms_base + c)
        g = tl.load(g_base + c * L + L - 1)
        dC = dC * tl.exp(g + m_in - tl.load(ms_base + c + 1))
        for l0 in range(0, L, BL):
            row0 = c * L + l0
            ok = row0 + ar_l < S
            mt_ptrs = MT_ptr + bh * NC * L + row0 + ar_l
            den_ptrs = DEN_ptr + bh * NC * L + row0 + ar_l
            if MASK_S:
                # DEN/MT of rows in blocks past S were never written (torch.empty): those rows are not
                # read, and take the exponent -inf (coefficient 0) instead of a select after exp.
                expo = tl.load(g_base + row0 + ar_l) + m_in - tl.load(mt_ptrs, mask=ok, other=0.0)
                expo = tl.where(ok, expo, float("-inf"))
                den = tl.load(den_ptrs, mask=ok, other=1.0)
            else:
                expo = tl.load(g_base + row0 + ar_l) + m_in - tl.load(mt_ptrs)
                den = tl.load(den_ptrs)
            coef = tl.exp(expo) * scale / den
            qT = load_tile(q_base + row0 * DK + qT_off, mk, ok, MASK_K, MASK_S)
            dh = load_tile(dh_base + row0 * DV + dh_off, ok, mv, MASK_S, MASK_V)
            dC = tl.dot((qT.to(ACC) * coef[None, :]).to(SDT), dh.to(SDT), dC, input_precision=PREC, out_dtype=ACC)

    store_tile(DC0_ptr + bh * DK * DV + tile + kv_off, dC, mk, mv, MASK_K, MASK_V)


@triton.jit
def _dq_block(dh_base, v_base, k_base, g_base, i_base, acc, diag, b_t, mt_t, offs_t, ok_t, j0, S, mk,
              DK: tl.constexpr, DV: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
              MASK_S: tl.constexpr, MASK_K: tl.constexpr, MASK_V: tl.constexpr, DIAG: tl.constexpr,
              DT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
    """Key block j0.. of dq~ (rows t): acc += (D o dh v^T) k over j < t; diag collects the j = t term."""
    ar_l = tl.arange(0, BL)
    ar_v = tl.arange(0, BV)
    offs_j = j0 + ar_l
    ok_j = offs_j < S
    dh_off = ar_l[:, None] * DV + ar_v[None, :]
    vT_off = ar_l[None, :] * DV + ar_v[:, None]
    dp = tl.zeros([BL, BL], dtype=ACC)
    for v0 in range(0, DV, BV):
        mv = v0 + ar_v < DV
        dh = load_tile(dh_base + v0 + dh_off, ok_t, mv, MASK_S, MASK_V)
        vT = load_tile(v_base + j0 * DV + v0 + vT_off, mv, ok_j, MASK_V, MASK_S)
        dp = tl.dot(dh.to(DT), vT.to(DT), dp, input_precision=PREC, out_dtype=ACC)
    dpd = dp * decay_block(b_t, mt_t, offs_t, g_base, offs_j, i_base, DIAG)
    if DIAG:
        diag += tl.sum(tl.where(offs_t[:, None] == offs_j[None, :], dpd, 0.0), axis=1)
        dpd = tl.where(offs_t[:, None] > offs_j[None, :], dpd, 0.0)
    kk = load_tile(k_base + j0 * DK + ar_l[:, None] * DK + tl.arange(0, BK)[None, :], ok_j, mk, MASK_S, MASK_K)
    acc = tl.dot(dpd.to(DT), kk.to(DT), acc, input_precision=PREC, out_dtype=ACC)
    return acc, diag


@triton.jit
def _bwd_dq_kernel(
    Q_ptr, K_ptr, V_ptr, DH_ptr, B_ptr, I_ptr, CS_ptr, MS_ptr, DEN_ptr, MT_ptr, DQ_ptr, QDQ_ptr,
    S, NC, BH, scale,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    MASK_S: tl.constexpr, MASK_K: tl.constexpr, MASK_V: tl.constexpr,
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
    ar_l = tl.arange(0, BL)
    ar_k = tl.arange(0, BK)
    ar_v = tl.arange(0, BV)
    offs_t = t0 + ar_l
    ok_t = offs_t < S
    mk = pid_k * BK + ar_k < DK
    k_base = K_ptr + bh * S * DK + pid_k * BK
    v_base = V_ptr + bh * S * DV
    dh_base = DH_ptr + bh * S * DV + t0 * DV
    g_base = B_ptr + bh * NC * L
    i_base = I_ptr + bh * NC * L
    cs_base = CS_ptr + (bh * NC + c) * DK * DV + pid_k * BK * DV

    b_t = tl.load(g_base + offs_t)
    mt_t = tl.load(MT_ptr + bh * NC * L + offs_t)
    den_t = tl.load(DEN_ptr + bh * NC * L + offs_t)
    e_t = tl.exp(b_t + tl.load(MS_ptr + bh * (NC + 1) + c) - mt_t)

    dh_off = ar_l[:, None] * DV + ar_v[None, :]
    cT_off = ar_k[None, :] * DV + ar_v[:, None]
    acc = tl.zeros([BL, BK], dtype=ACC)
    for v0 in range(0, DV, BV):
        mv = v0 + ar_v < DV
        dh = load_tile(dh_base + v0 + dh_off, ok_t, mv, MASK_S, MASK_V)
        cT = load_tile(cs_base + v0 + cT_off, mv, mk, MASK_V, MASK_K)
        acc = tl.dot(dh.to(SDT), cT.to(SDT), acc, input_precision=PREC, out_dtype=ACC)
    acc = acc * e_t[:, None]

    diag = tl.zeros([BL], dtype=ACC)
    for kj in range(0, qi):
        acc, diag = _dq_block(dh_base, v_base, k_base, g_base, i_base, acc, diag, b_t, mt_t, offs_t, ok_t,
                              c * L + kj * BL, S, mk, DK, DV, BL, BK, BV, MASK_S, MASK_K, MASK_V, False, DT, ACC, PREC)
    acc, diag = _dq_block(dh_base, v_base, k_base, g_base, i_base, acc, diag, b_t, mt_t, offs_t, ok_t,
                          t0, S, mk, DK, DV, BL, BK, BV, MASK_S, MASK_K, MASK_V, True, DT, ACC, PREC)

    # q.dq without the j = t term: that term equals its twin in k.dk and would only add rounding noise
    # of the size of the largest term to the log f gradient, which is a difference of the two sums.
    rs = (scale / den_t)[:, None]
    ptr_off = bh * S * DK + t0 * DK + pid_k * BK + ar_l[:, None] * DK + ar_k[None, :]
    qq = load_tile(Q_ptr + ptr_off, ok_t, mk, MASK_S, MASK_K).to(ACC)
    kt = load_tile(K_ptr + ptr_off, ok_t, mk, MASK_S, MASK_K).to(ACC)
    tl.store(QDQ_ptr + (pid_k * BH + bh) * NC * L + offs_t, tl.sum(qq * acc * rs, axis=1))
    dq = (acc + diag[:, None] * kt) * rs
    store_tile(DQ_ptr + ptr_off, dq.to(DQ_ptr.dtype.element_ty), ok_t, mk, MASK_S, MASK_K)


@triton.jit
def _dk_block(dh_base, v_base, q_base, g_base, i_base, acc, diag, b_j, i_j, offs_j, ok_j, t0, S, scale,
              MT_base, DEN_base, mk,
              DK: tl.constexpr, DV: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
              MASK_S: tl.constexpr, MASK_K: tl.constexpr, MASK_V: tl.constexpr, DIAG: tl.constexpr,
              DT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
    """Query block t0.. of dk (rows j): acc += (D^T o v dh^T / den) q~ over t > j; diag the t = j term."""
    ar_l = tl.arange(0, BL)
    ar_v = tl.arange(0, BV)
    offs_t = t0 + ar_l
    ok_t = offs_t < S
    v_off = ar_l[:, None] * DV + ar_v[None, :]
    dhT_off = ar_l[None, :] * DV + ar_v[:, None]
    dpT = tl.zeros([BL, BL], dtype=ACC)
    for v0 in range(0, DV, BV):
        mv = v0 + ar_v < DV
        vv = load_tile(v_base + v0 + v_off, ok_j, mv, MASK_S, MASK_V)
        dhT = load_tile(dh_base + t0 * DV + v0 + dhT_off, mv, ok_t, MASK_V, MASK_S)
        dpT = tl.dot(vv.to(DT), dhT.to(DT), dpT, input_precision=PREC, out_dtype=ACC)
    b_t = tl.load(g_base + offs_t)
    mt_t = tl.load(MT_base + offs_t)
    den_t = tl.load(DEN_base + offs_t)
    dT = ((b_t[None, :] - b_j[:, None]) + i_j[:, None]) - mt_t[None, :]
    if DIAG:  # -inf before exp, not a select after an overflow (see decay_block)
        dT = tl.where(offs_t[None, :] >= offs_j[:, None], dT, float("-inf"))
    dT = tl.exp(dT)
    a = dpT * dT * (scale / den_t)[None, :]
    if DIAG:
        diag += tl.sum(tl.where(offs_t[None, :] == offs_j[:, None], a, 0.0), axis=1)
        a = tl.where(offs_t[None, :] > offs_j[:, None], a, 0.0)
    qq = load_tile(q_base + t0 * DK + ar_l[:, None] * DK + tl.arange(0, BK)[None, :], ok_t, mk, MASK_S, MASK_K)
    acc = tl.dot(a.to(DT), qq.to(DT), acc, input_precision=PREC, out_dtype=ACC)
    return acc, diag


@triton.jit
def _bwd_dk_kernel(
    Q_ptr, K_ptr, V_ptr, DH_ptr, B_ptr, I_ptr, DCS_ptr, MS_ptr, DEN_ptr, MT_ptr, DK_ptr, KDK_ptr, KDKD_ptr,
    S, NC, BH, scale,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    MASK_S: tl.constexpr, MASK_K: tl.constexpr, MASK_V: tl.constexpr,
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
    ar_l = tl.arange(0, BL)
    ar_k = tl.arange(0, BK)
    ar_v = tl.arange(0, BV)
    offs_j = j0 + ar_l
    ok_j = offs_j < S
    mk = pid_k * BK + ar_k < DK
    q_base = Q_ptr + bh * S * DK + pid_k * BK
    v_base = V_ptr + bh * S * DV + j0 * DV
    dh_base = DH_ptr + bh * S * DV
    g_base = B_ptr + bh * NC * L
    i_base = I_ptr + bh * NC * L
    dcs_base = DCS_ptr + (bh * NC + c) * DK * DV + pid_k * BK * DV

    b_j = tl.load(g_base + offs_j)
    i_j = tl.load(i_base + offs_j)
    g = tl.load(g_base + c * L + L - 1)
    w_j = tl.exp((g - b_j) + i_j - tl.load(MS_ptr + bh * (NC + 1) + c + 1))

    v_off = ar_l[:, None] * DV + ar_v[None, :]
    dcT_off = ar_k[None, :] * DV + ar_v[:, None]
    acc = tl.zeros([BL, BK], dtype=ACC)
    for v0 in range(0, DV, BV):
        mv = v0 + ar_v < DV
        vv = load_tile(v_base + v0 + v_off, ok_j, mv, MASK_S, MASK_V)
        dcT = load_tile(dcs_base + v0 + dcT_off, mv, mk, MASK_V, MASK_K)
        acc = tl.dot(vv.to(SDT), dcT.to(SDT), acc, input_precision=PREC, out_dtype=ACC)
    acc = acc * w_j[:, None]

    diag = tl.zeros([BL], dtype=ACC)
    mt_base = MT_ptr + bh * NC * L
    den_base = DEN_ptr + bh * NC * L
    acc, diag = _dk_block(dh_base, v_base, q_base, g_base, i_base, acc, diag, b_j, i_j, offs_j, ok_j, j0, S,
                          scale, mt_base, den_base, mk, DK, DV, BL, BK, BV, MASK_S, MASK_K, MASK_V, True, DT, ACC, PREC)
    n_q = tl.minimum(NBL, tl.cdiv(S - c * L, BL))  # query blocks of this chunk holding real rows
    for qi in range(kj + 1, n_q):
        acc, diag = _dk_block(dh_base, v_base, q_base, g_base, i_base, acc, diag, b_j, i_j, offs_j, ok_j,
                              c * L + qi * BL, S, scale, mt_base, den_base, mk, DK, DV, BL, BK, BV,
                              MASK_S, MASK_K, MASK_V, False, DT, ACC, PREC)

    # k.dk without the t = j term (see the dq kernel) for log f; the term itself goes to KDKD for i.
    ptr_off = bh * S * DK + j0 * DK + pid_k * BK + ar_l[:, None] * DK + ar_k[None, :]
    kk = load_tile(K_ptr + ptr_off, ok_j, mk, MASK_S, MASK_K).to(ACC)
    qj = load_tile(Q_ptr + ptr_off, ok_j, mk, MASK_S, MASK_K).to(ACC)
    part = (pid_k * BH + bh) * NC * L + offs_j
    tl.store(KDK_ptr + part, tl.sum(kk * acc, axis=1))
    tl.store(KDKD_ptr + part, diag * tl.sum(kk * qj, axis=1))
    dk = acc + diag[:, None] * qj
    store_tile(DK_ptr + ptr_off, dk.to(DK_ptr.dtype.element_ty), ok_j, mk, MASK_S, MASK_K)


@triton.jit
def _dv_block(q_base, k_base, dh_base, g_base, i_base, acc, b_j, i_j, offs_j, ok_j, t0, S, scale, mv,
              MT_base, DEN_base,
              DK: tl.constexpr, DV: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
              MASK_S: tl.constexpr, MASK_K: tl.constexpr, MASK_V: tl.constexpr, DIAG: tl.constexpr,
              DT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
    """Query block t0.. of dv (rows j): acc += (D^T o k q~^T / den) dh over t >= j."""
    ar_l = tl.arange(0, BL)
    ar_k = tl.arange(0, BK)
    offs_t = t0 + ar_l
    ok_t = offs_t < S
    k_off = ar_l[:, None] * DK + ar_k[None, :]
    qT_off = ar_l[None, :] * DK + ar_k[:, None]
    pT = tl.zeros([BL, BL], dtype=ACC)
    for k0 in range(0, DK, BK):
        mk = k0 + ar_k < DK
        kk = load_tile(k_base + k0 + k_off, ok_j, mk, MASK_S, MASK_K)
        qT = load_tile(q_base + t0 * DK + k0 + qT_off, mk, ok_t, MASK_K, MASK_S)
        pT = tl.dot(kk.to(DT), qT.to(DT), pT, input_precision=PREC, out_dtype=ACC)
    b_t = tl.load(g_base + offs_t)
    mt_t = tl.load(MT_base + offs_t)
    den_t = tl.load(DEN_base + offs_t)
    dT = ((b_t[None, :] - b_j[:, None]) + i_j[:, None]) - mt_t[None, :]
    if DIAG:  # -inf before exp, not a select after an overflow (see decay_block)
        dT = tl.where(offs_t[None, :] >= offs_j[:, None], dT, float("-inf"))
    dT = tl.exp(dT)
    a = pT * dT * (scale / den_t)[None, :]
    dh = load_tile(dh_base + t0 * DV + ar_l[:, None] * DV + tl.arange(0, BV)[None, :], ok_t, mv, MASK_S, MASK_V)
    acc = tl.dot(a.to(DT), dh.to(DT), acc, input_precision=PREC, out_dtype=ACC)
    return acc


@triton.jit
def _bwd_dv_kernel(
    Q_ptr, K_ptr, DH_ptr, B_ptr, I_ptr, DCS_ptr, MS_ptr, DEN_ptr, MT_ptr, DV_ptr,
    S, NC, scale,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    MASK_S: tl.constexpr, MASK_K: tl.constexpr, MASK_V: tl.constexpr,
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
    ar_l = tl.arange(0, BL)
    ar_k = tl.arange(0, BK)
    ar_v = tl.arange(0, BV)
    offs_j = j0 + ar_l
    ok_j = offs_j < S
    mv = pid_v * BV + ar_v < DV
    q_base = Q_ptr + bh * S * DK
    k_base = K_ptr + bh * S * DK + j0 * DK
    dh_base = DH_ptr + bh * S * DV + pid_v * BV
    g_base = B_ptr + bh * NC * L
    i_base = I_ptr + bh * NC * L
    dcs_base = DCS_ptr + (bh * NC + c) * DK * DV + pid_v * BV

    b_j = tl.load(g_base + offs_j)
    i_j = tl.load(i_base + offs_j)
    g = tl.load(g_base + c * L + L - 1)
    w_j = tl.exp((g - b_j) + i_j - tl.load(MS_ptr + bh * (NC + 1) + c + 1))

    k_off = ar_l[:, None] * DK + ar_k[None, :]
    dc_off = ar_k[:, None] * DV + ar_v[None, :]
    acc = tl.zeros([BL, BV], dtype=ACC)
    for k0 in range(0, DK, BK):
        mk = k0 + ar_k < DK
        kk = load_tile(k_base + k0 + k_off, ok_j, mk, MASK_S, MASK_K)
        dc = load_tile(dcs_base + k0 * DV + dc_off, mk, mv, MASK_K, MASK_V)
        acc = tl.dot(kk.to(SDT), dc.to(SDT), acc, input_precision=PREC, out_dtype=ACC)
    acc = acc * w_j[:, None]

    mt_base = MT_ptr + bh * NC * L
    den_base = DEN_ptr + bh * NC * L
    acc = _dv_block(q_base, k_base, dh_base, g_base, i_base, acc, b_j, i_j, offs_j, ok_j, j0, S, scale, mv,
                    mt_base, den_base, DK, DV, BL, BK, BV, MASK_S, MASK_K, MASK_V, True, DT, ACC, PREC)
    n_q = tl.minimum(NBL, tl.cdiv(S - c * L, BL))
    for qi in range(kj + 1, n_q):
        acc = _dv_block(q_base, k_base, dh_base, g_base, i_base, acc, b_j, i_j, offs_j, ok_j, c * L + qi * BL, S,
                        scale, mv, mt_base, den_base, DK, DV, BL, BK, BV, MASK_S, MASK_K, MASK_V, False, DT, ACC,
                        PREC)

    dv_ptrs = DV_ptr + bh * S * DV + j0 * DV + pid_v * BV + ar_l[:, None] * DV + ar_v[None, :]
    store_tile(dv_ptrs, acc.to(DV_ptr.dtype.element_ty), ok_j, mv, MASK_S, MASK_V)
