"""Forward kernels of the chunkwise mLSTM (research/mlstm.md §1.4).

Layout shared by all kernels of this folder (B*H flattened to one axis, every tensor contiguous):
  q, k [BH, S, DK]; v, h [BH, S, DV];
  gate buffers b, ig [BH, NC*L] in the accumulation dtype, padded to whole chunks:
    b  = inclusive cumulative sum of logsigmoid(f) inside each chunk (0 on the padded tail),
    ig = input-gate pre-activation (-inf on the padded tail, so padded steps write nothing);
  chunk-boundary states CS [BH, NC+1, DK, DV], NS [BH, NC+1, DK], MS [BH, NC+1]: entry c is the state
  entering chunk c, entry NC the final state;
  per-token normaliser DEN = max(|n.q|, exp(-m)) + eps and stabiliser MT [BH, NC*L].

Two tiling levels (TFLA): a chunk of L tokens is cut into NBL = L // BL blocks of BL rows; the head
dimensions are cut into BK / BV tiles. Dots whose operands are raw inputs (q, k, v, dh) run in DT (the
input dtype on GPU); dots with a state operand run in SDT (fp32 unless the input is bf16, because a
state or a state gradient can leave the fp16 range). Everything accumulates in ACC.
"""

import triton
import triton.language as tl


@triton.jit
def _fwd_state_kernel(
    K_ptr, V_ptr, B_ptr, I_ptr, C0_ptr, N0_ptr, M0_ptr, CS_ptr, NS_ptr, MS_ptr,
    S, NC,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_INIT: tl.constexpr, DT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """Sequential pass over chunks: C_c = exp(g + m_{c-1} - m_c) C_{c-1} + sum_j exp(a_j - m_c) k_j v_j^T."""
    pid_k = tl.program_id(0)
    pid_v = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mk = offs_k < DK
    mv = offs_v < DV
    mkv = mk[:, None] & mv[None, :]
    kv_off = offs_k[:, None] * DV + offs_v[None, :]
    k_base = K_ptr + bh * S * DK
    v_base = V_ptr + bh * S * DV
    g_base = B_ptr + bh * NC * L
    i_base = I_ptr + bh * NC * L
    cs_base = CS_ptr + bh * (NC + 1) * DK * DV
    ns_base = NS_ptr + bh * (NC + 1) * DK
    ms_base = MS_ptr + bh * (NC + 1)
    # n and m do not depend on the V tile (nor m on the K tile): one program stores them.
    store_n = mk & (pid_v == 0)
    store_m = (pid_k == 0) & (pid_v == 0)

    if HAS_INIT:
        C = tl.load(C0_ptr + bh * DK * DV + kv_off, mask=mkv, other=0.0).to(ACC)
        n = tl.load(N0_ptr + bh * DK + offs_k, mask=mk, other=0.0).to(ACC)
    else:
        C = tl.zeros([BK, BV], dtype=ACC)
        n = tl.zeros([BK], dtype=ACC)
    m = tl.load(M0_ptr + bh).to(ACC)

    offs_chunk = tl.arange(0, L)
    for c in range(0, NC):
        tl.store(cs_base + c * DK * DV + kv_off, C, mask=mkv)
        tl.store(ns_base + c * DK + offs_k, n, mask=store_n)
        tl.store(ms_base + c, m, mask=store_m)

        g = tl.load(g_base + c * L + L - 1)
        # a_j: log weight that the write at step j carries at the chunk end.
        a = (g - tl.load(g_base + c * L + offs_chunk)) + tl.load(i_base + c * L + offs_chunk)
        m_new = tl.maximum(g + m, tl.max(a, axis=0))
        decay = tl.exp(g + m - m_new)
        C = C * decay
        n = n * decay
        for l0 in range(0, L, BL):
            offs_l = l0 + tl.arange(0, BL)
            pos = c * L + offs_l
            ml = pos < S
            a_l = (g - tl.load(g_base + c * L + offs_l)) + tl.load(i_base + c * L + offs_l)
            w = tl.exp(a_l - m_new)
            kT = tl.load(k_base + pos[None, :] * DK + offs_k[:, None], mask=mk[:, None] & ml[None, :], other=0.0)
            vv = tl.load(v_base + pos[:, None] * DV + offs_v[None, :], mask=ml[:, None] & mv[None, :], other=0.0)
            kw = kT.to(ACC) * w[None, :]
            C = tl.dot(kw.to(DT), vv.to(DT), C, input_precision=PREC, out_dtype=ACC)
            n += tl.sum(kw, axis=1)
        m = m_new

    tl.store(cs_base + NC * DK * DV + kv_off, C, mask=mkv)
    tl.store(ns_base + NC * DK + offs_k, n, mask=store_n)
    tl.store(ms_base + NC, m, mask=store_m)


@triton.jit
def _fwd_out_kernel(
    Q_ptr, K_ptr, V_ptr, B_ptr, I_ptr, CS_ptr, NS_ptr, MS_ptr, H_ptr, DEN_ptr, MT_ptr,
    S, NC, scale, eps,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DT: tl.constexpr, SDT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """Outputs of one block of BL query rows of one chunk, for one V tile (parallel over chunks)."""
    NBL: tl.constexpr = L // BL
    pid_v = tl.program_id(0)
    pid_cq = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    c = pid_cq // NBL
    qi = pid_cq % NBL
    t0 = c * L + qi * BL
    if t0 >= S:
        return
    offs_t = t0 + tl.arange(0, BL)
    mt_ok = offs_t < S
    offs_v = pid_v * BV + tl.arange(0, BV)
    mv = offs_v < DV
    q_base = Q_ptr + bh * S * DK
    k_base = K_ptr + bh * S * DK
    v_base = V_ptr + bh * S * DV
    g_base = B_ptr + bh * NC * L
    i_base = I_ptr + bh * NC * L
    cs_base = CS_ptr + (bh * (NC + 1) + c) * DK * DV
    ns_base = NS_ptr + (bh * (NC + 1) + c) * DK

    b_t = tl.load(g_base + offs_t)
    m_inter = b_t + tl.load(MS_ptr + bh * (NC + 1) + c)

    # Stabiliser: m_t = max(b_t + m_{c-1}, max_{j<=t} (b_t - b_j + i_j)); a gate-only pass first.
    m_intra = tl.full([BL], float("-inf"), dtype=ACC)
    for kj in range(0, qi + 1):
        offs_j = c * L + kj * BL + tl.arange(0, BL)
        val = (b_t[:, None] - tl.load(g_base + offs_j)[None, :]) + tl.load(i_base + offs_j)[None, :]
        val = tl.where(offs_t[:, None] >= offs_j[None, :], val, float("-inf"))
        m_intra = tl.maximum(m_intra, tl.max(val, axis=1))
    m_t = tl.maximum(m_inter, m_intra)
    e_t = tl.exp(m_inter - m_t)

    # Inter-chunk part: C_{c-1}^T q and n_{c-1}^T q.
    h_acc = tl.zeros([BL, BV], dtype=ACC)
    den_acc = tl.zeros([BL], dtype=ACC)
    for k0 in range(0, DK, BK):
        offs_k = k0 + tl.arange(0, BK)
        mk = offs_k < DK
        qq = tl.load(q_base + offs_t[:, None] * DK + offs_k[None, :], mask=mt_ok[:, None] & mk[None, :], other=0.0)
        cc = tl.load(cs_base + offs_k[:, None] * DV + offs_v[None, :], mask=mk[:, None] & mv[None, :], other=0.0)
        nn = tl.load(ns_base + offs_k, mask=mk, other=0.0)
        h_acc = tl.dot(qq.to(SDT), cc.to(SDT), h_acc, input_precision=PREC, out_dtype=ACC)
        den_acc += tl.sum(qq.to(ACC) * nn[None, :], axis=1)
    h_acc = h_acc * (e_t * scale)[:, None]
    den_acc = den_acc * (e_t * scale)

    # Intra-chunk part, key blocks 0..qi of this chunk.
    for kj in range(0, qi + 1):
        offs_j = c * L + kj * BL + tl.arange(0, BL)
        mj_ok = offs_j < S
        s = tl.zeros([BL, BL], dtype=ACC)
        for k0 in range(0, DK, BK):
            offs_k = k0 + tl.arange(0, BK)
            mk = offs_k < DK
            qq = tl.load(q_base + offs_t[:, None] * DK + offs_k[None, :], mask=mt_ok[:, None] & mk[None, :], other=0.0)
            kT = tl.load(k_base + offs_j[None, :] * DK + offs_k[:, None], mask=mk[:, None] & mj_ok[None, :], other=0.0)
            s = tl.dot(qq.to(DT), kT.to(DT), s, input_precision=PREC, out_dtype=ACC)
        val = (b_t[:, None] - tl.load(g_base + offs_j)[None, :]) + tl.load(i_base + offs_j)[None, :]
        d = tl.where(offs_t[:, None] >= offs_j[None, :], tl.exp(val - m_t[:, None]), 0.0)
        p = s * scale * d
        den_acc += tl.sum(p, axis=1)
        vv = tl.load(v_base + offs_j[:, None] * DV + offs_v[None, :], mask=mj_ok[:, None] & mv[None, :], other=0.0)
        h_acc = tl.dot(p.to(DT), vv.to(DT), h_acc, input_precision=PREC, out_dtype=ACC)

    den = tl.maximum(tl.abs(den_acc), tl.exp(-m_t)) + eps
    h = h_acc / den[:, None]
    h_ptrs = H_ptr + bh * S * DV + offs_t[:, None] * DV + offs_v[None, :]
    tl.store(h_ptrs, h.to(H_ptr.dtype.element_ty), mask=mt_ok[:, None] & mv[None, :])
    # Rows of the padded tail are stored too (finite values); DEN/MT have NC*L columns.
    first_v = pid_v == 0
    tl.store(DEN_ptr + bh * NC * L + offs_t, den, mask=first_v & (offs_t >= 0))
    tl.store(MT_ptr + bh * NC * L + offs_t, m_t, mask=first_v & (offs_t >= 0))
