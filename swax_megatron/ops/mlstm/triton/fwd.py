"""Forward kernels of the chunkwise mLSTM (the math of ops/mlstm/chunk.py, the reference).

Layout shared by all kernels of this folder (B*H flattened to one axis, every tensor contiguous):
  q, k [BH, S, DK]; v, h [BH, S, DV];
  gate buffers b, ig [BH, NC*L] in the accumulation dtype, padded to whole chunks:
    b  = inclusive cumulative sum of logsigmoid(f) inside each chunk (0 on the padded tail),
    ig = input-gate pre-activation (-inf on the padded tail, so padded steps write nothing);
  states entering each chunk CS [BH, NC, DK, DV] (stored in the state-dot dtype SDT: bf16 for bf16 inputs,
  since every reader casts them to SDT anyway), NS [BH, NC+1, DK] and MS [BH, NC+1] in ACC (entry NC = final);
  the final C in ACC, CN [BH, DK, DV];
  per-token normaliser DEN = max(|n.q|, exp(-m)) + eps and stabiliser MT [BH, NC*L].

Two tiling levels (TFLA): a chunk of L tokens is cut into NBL = L // BL blocks of BL rows; the head
dimensions are cut into BK / BV tiles. Dots whose operands are raw inputs (q, k, v, dh) run in DT (the
input dtype on GPU); dots with a state operand run in SDT (fp32 unless the input is bf16, because a
state or a state gradient can leave the fp16 range). Everything accumulates in ACC.

Register economy (measured with ptxas for sm_90): 2-D offsets are int32 tensors built once, pointers are a
scalar base plus those offsets, and masks exist only where a constexpr says a tile can run past the data
(MASK_S: S is not a multiple of L; MASK_K / MASK_V: a head dim is not a multiple of its tile).
"""

import triton
import triton.language as tl


@triton.jit
def load_tile(ptrs, row_ok, col_ok, MR: tl.constexpr, MC: tl.constexpr):
    """tl.load of a 2-D tile, masked only along the dimensions that can overrun (zeros there)."""
    if MR and MC:
        x = tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    elif MR:
        x = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    elif MC:
        x = tl.load(ptrs, mask=col_ok[None, :], other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def store_tile(ptrs, x, row_ok, col_ok, MR: tl.constexpr, MC: tl.constexpr):
    if MR and MC:
        tl.store(ptrs, x, mask=row_ok[:, None] & col_ok[None, :])
    elif MR:
        tl.store(ptrs, x, mask=row_ok[:, None])
    elif MC:
        tl.store(ptrs, x, mask=col_ok[None, :])
    else:
        tl.store(ptrs, x)


@triton.jit
def decay_block(b_t, m_t, offs_t, g_base, offs_j, i_base, DIAG: tl.constexpr):
    """D_tj = exp(b_t - b_j + i_j - m_t), causal mask on the diagonal block only. (b_t - b_j) is formed
    first: both can be large (forget gates near 0) while their difference is small. Masked entries
    (j > t) get the exponent -inf rather than a select after exp: there b_t - b_j is a sum of -log f
    terms and overflows (inf), harmless only while the select comes before any arithmetic on it."""
    val = (b_t[:, None] - tl.load(g_base + offs_j)[None, :]) + tl.load(i_base + offs_j)[None, :]
    val = val - m_t[:, None]
    if DIAG:
        val = tl.where(offs_t[:, None] >= offs_j[None, :], val, float("-inf"))
    return tl.exp(val)


@triton.jit
def _fwd_state_kernel(
    K_ptr, V_ptr, B_ptr, I_ptr, C0_ptr, N0_ptr, M0_ptr, CS_ptr, CN_ptr, NS_ptr, MS_ptr,
    S, NC,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    MASK_S: tl.constexpr, MASK_K: tl.constexpr, MASK_V: tl.constexpr,
    HAS_INIT: tl.constexpr, DT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """Sequential pass over chunks: C_c = exp(g + m_{c-1} - m_c) C_{c-1} + sum_j exp(a_j - m_c) k_j v_j^T."""
    pid_k = tl.program_id(0)
    pid_v = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    ar_l = tl.arange(0, BL)
    ar_k = tl.arange(0, BK)
    ar_v = tl.arange(0, BV)
    mk = pid_k * BK + ar_k < DK
    mv = pid_v * BV + ar_v < DV
    kT_off = ar_l[None, :] * DK + ar_k[:, None]
    v_off = ar_l[:, None] * DV + ar_v[None, :]
    kv_off = ar_k[:, None] * DV + ar_v[None, :]
    k_base = K_ptr + bh * S * DK + pid_k * BK
    v_base = V_ptr + bh * S * DV + pid_v * BV
    g_base = B_ptr + bh * NC * L
    i_base = I_ptr + bh * NC * L
    tile = pid_k * BK * DV + pid_v * BV
    cs_base = CS_ptr + bh * NC * DK * DV + tile
    ns_base = NS_ptr + bh * (NC + 1) * DK + pid_k * BK + ar_k
    ms_base = MS_ptr + bh * (NC + 1)
    # n and m do not depend on the V tile (nor m on the K tile): one program stores them.
    store_n = mk & (pid_v == 0)
    store_m = (pid_k == 0) & (pid_v == 0)

    if HAS_INIT:
        C = load_tile(C0_ptr + bh * DK * DV + tile + kv_off, mk, mv, MASK_K, MASK_V).to(ACC)
        n = tl.load(N0_ptr + bh * DK + pid_k * BK + ar_k, mask=mk, other=0.0).to(ACC)
    else:
        C = tl.zeros([BK, BV], dtype=ACC)
        n = tl.zeros([BK], dtype=ACC)
    m = tl.load(M0_ptr + bh).to(ACC)

    ar_c = tl.arange(0, L)
    for c in range(0, NC):
        store_tile(cs_base + c * DK * DV + kv_off, C.to(CS_ptr.dtype.element_ty), mk, mv, MASK_K, MASK_V)
        tl.store(ns_base + c * DK, n, mask=store_n)
        tl.store(ms_base + c, m, mask=store_m)

        g = tl.load(g_base + c * L + L - 1)
        # a_j: log weight that the write at step j carries at the chunk end.
        a = (g - tl.load(g_base + c * L + ar_c)) + tl.load(i_base + c * L + ar_c)
        m_new = tl.maximum(g + m, tl.max(a, axis=0))
        decay = tl.exp(g + m - m_new)
        C = C * decay
        n = n * decay
        for l0 in range(0, L, BL):
            row0 = c * L + l0
            ok = row0 + ar_l < S
            w = tl.exp((g - tl.load(g_base + row0 + ar_l)) + tl.load(i_base + row0 + ar_l) - m_new)
            kT = load_tile(k_base + row0 * DK + kT_off, mk, ok, MASK_K, MASK_S)
            vv = load_tile(v_base + row0 * DV + v_off, ok, mv, MASK_S, MASK_V)
            kw = kT.to(ACC) * w[None, :]
            C = tl.dot(kw.to(DT), vv.to(DT), C, input_precision=PREC, out_dtype=ACC)
            n += tl.sum(kw, axis=1)
        m = m_new

    store_tile(CN_ptr + bh * DK * DV + tile + kv_off, C, mk, mv, MASK_K, MASK_V)
    tl.store(ns_base + NC * DK, n, mask=store_n)
    tl.store(ms_base + NC, m, mask=store_m)


@triton.jit
def _fwd_intra_block(q_base, k_base, v_base, g_base, i_base, h_acc, den_acc, b_t, m_t, offs_t, ok_t,
                     j0, S, scale, mv,
                     DK: tl.constexpr, DV: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     MASK_S: tl.constexpr, MASK_K: tl.constexpr, MASK_V: tl.constexpr, DIAG: tl.constexpr,
                     DT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
    """Adds key block j0..j0+BL of the chunk to the query block's numerator and n.q accumulators."""
    ar_l = tl.arange(0, BL)
    ar_k = tl.arange(0, BK)
    offs_j = j0 + ar_l
    ok_j = offs_j < S
    q_off = ar_l[:, None] * DK + ar_k[None, :]
    kT_off = ar_l[None, :] * DK + ar_k[:, None]
    s = tl.zeros([BL, BL], dtype=ACC)
    for k0 in range(0, DK, BK):
        mk = k0 + ar_k < DK
        qq = load_tile(q_base + k0 + q_off, ok_t, mk, MASK_S, MASK_K)
        kT = load_tile(k_base + j0 * DK + k0 + kT_off, mk, ok_j, MASK_K, MASK_S)
        s = tl.dot(qq.to(DT), kT.to(DT), s, input_precision=PREC, out_dtype=ACC)
    p = s * scale * decay_block(b_t, m_t, offs_t, g_base, offs_j, i_base, DIAG)
    den_acc += tl.sum(p, axis=1)
    vv = load_tile(v_base + j0 * DV + ar_l[:, None] * DV + tl.arange(0, BV)[None, :], ok_j, mv, MASK_S, MASK_V)
    h_acc = tl.dot(p.to(DT), vv.to(DT), h_acc, input_precision=PREC, out_dtype=ACC)
    return h_acc, den_acc


@triton.jit
def _fwd_out_kernel(
    Q_ptr, K_ptr, V_ptr, B_ptr, I_ptr, CS_ptr, NS_ptr, MS_ptr, H_ptr, DEN_ptr, MT_ptr,
    S, NC, scale, eps,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    MASK_S: tl.constexpr, MASK_K: tl.constexpr, MASK_V: tl.constexpr,
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
    ar_l = tl.arange(0, BL)
    ar_k = tl.arange(0, BK)
    ar_v = tl.arange(0, BV)
    offs_t = t0 + ar_l
    ok_t = offs_t < S
    mv = pid_v * BV + ar_v < DV
    q_base = Q_ptr + bh * S * DK + t0 * DK
    k_base = K_ptr + bh * S * DK
    v_base = V_ptr + bh * S * DV + pid_v * BV
    g_base = B_ptr + bh * NC * L
    i_base = I_ptr + bh * NC * L
    cs_base = CS_ptr + (bh * NC + c) * DK * DV + pid_v * BV
    ns_base = NS_ptr + (bh * (NC + 1) + c) * DK

    b_t = tl.load(g_base + offs_t)
    m_inter = b_t + tl.load(MS_ptr + bh * (NC + 1) + c)

    # Stabiliser: m_t = max(b_t + m_{c-1}, max_{j<=t} (b_t - b_j + i_j)); a gate-only pass first.
    m_intra = tl.full([BL], float("-inf"), dtype=ACC)
    for kj in range(0, qi + 1):
        offs_j = c * L + kj * BL + ar_l
        val = (b_t[:, None] - tl.load(g_base + offs_j)[None, :]) + tl.load(i_base + offs_j)[None, :]
        val = tl.where(offs_t[:, None] >= offs_j[None, :], val, float("-inf"))
        m_intra = tl.maximum(m_intra, tl.max(val, axis=1))
    m_t = tl.maximum(m_inter, m_intra)
    e_t = tl.exp(m_inter - m_t)

    # Inter-chunk part: C_{c-1}^T q and n_{c-1}^T q.
    q_off = ar_l[:, None] * DK + ar_k[None, :]
    c_off = ar_k[:, None] * DV + ar_v[None, :]
    h_acc = tl.zeros([BL, BV], dtype=ACC)
    den_acc = tl.zeros([BL], dtype=ACC)
    for k0 in range(0, DK, BK):
        mk = k0 + ar_k < DK
        qq = load_tile(q_base + k0 + q_off, ok_t, mk, MASK_S, MASK_K)
        cc = load_tile(cs_base + k0 * DV + c_off, mk, mv, MASK_K, MASK_V)
        nn = tl.load(ns_base + k0 + ar_k, mask=mk, other=0.0)
        h_acc = tl.dot(qq.to(SDT), cc.to(SDT), h_acc, input_precision=PREC, out_dtype=ACC)
        den_acc += tl.sum(qq.to(ACC) * nn[None, :], axis=1)
    h_acc = h_acc * (e_t * scale)[:, None]
    den_acc = den_acc * (e_t * scale)

    # Intra-chunk part: key blocks 0..qi-1 are fully visible, block qi is the causal diagonal.
    for kj in range(0, qi):
        h_acc, den_acc = _fwd_intra_block(
            q_base, k_base, v_base, g_base, i_base, h_acc, den_acc, b_t, m_t, offs_t, ok_t, c * L + kj * BL, S,
            scale, mv, DK, DV, BL, BK, BV, MASK_S, MASK_K, MASK_V, False, DT, ACC, PREC)
    h_acc, den_acc = _fwd_intra_block(
        q_base, k_base, v_base, g_base, i_base, h_acc, den_acc, b_t, m_t, offs_t, ok_t, t0, S,
        scale, mv, DK, DV, BL, BK, BV, MASK_S, MASK_K, MASK_V, True, DT, ACC, PREC)

    den = tl.maximum(tl.abs(den_acc), tl.exp(-m_t)) + eps
    h = h_acc / den[:, None]
    h_ptrs = H_ptr + bh * S * DV + t0 * DV + pid_v * BV + ar_l[:, None] * DV + ar_v[None, :]
    store_tile(h_ptrs, h.to(H_ptr.dtype.element_ty), ok_t, mv, MASK_S, MASK_V)
    # Every row of the block is stored, padded tail included (finite values); DEN/MT have NC*L columns.
    first_v = (ar_l >= 0) & (pid_v == 0)
    tl.store(DEN_ptr + bh * NC * L + offs_t, den, mask=first_v)
    tl.store(MT_ptr + bh * NC * L + offs_t, m_t, mask=first_v)
