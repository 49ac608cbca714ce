"""Chunkwise-parallel mLSTM: the training path on CPU.

Per chunk of L steps (b_t = inclusive cumsum of log f inside the chunk, g = b_L):

  inter-chunk (a loop over S/L chunks, elementwise only):
      m_k = max(g_k + m_{k-1}, max_j a_j),  a_j = g_k - b_j + i_j
      C_k = exp(g_k + m_{k-1} - m_k) C_{k-1} + exp(max_j a_j - m_k) * sum_j exp(a_j - max_j a_j) k_j v_j^T
  intra-chunk (batched matmuls over all chunks at once):
      m_t = max(b_t + m_{k-1}, b_t + max_{j<=t}(i_j - b_j))
      h_t = [sum_{j<=t} (q_t.k_j) e^{b_t-b_j+i_j-m_t} v_j + e^{b_t+m_{k-1}-m_t} C_{k-1}^T q_t] / norm_t

n follows the same recurrence with k in place of k v^T. The loop only needs the chunk-end
stabilisers, which depend on the gates alone, so every chunk's local write term (scaled to its
own end state) comes from one batched matmul before the loop.

grad="stopgrad" (default) differentiates with norm_t and every m held constant, the convention of
mlstm_kernels' custom backward (Beck et al., TFLA, arXiv 2503.14376). Its backward is written by hand:
  dq, dk, dv   from batched matmuls plus a reverse loop over chunks for dC (dC_{k-1} = decay dC_k + local);
  di_j         = k_j . dk_j
  d(log f)_r   = sum_{s>=r} (q_s.dq_s - k_s.dk_s) + <C_S, dC_S> + <n_S, dn_S>
The last identity holds only because m and norm are constants; the two inner products carry a
loss placed on the returned final state. Boundary stabilisers cancel between a state and its
reader, so holding them constant changes nothing. Initial state: C and n get their gradients, and
m gets <dC0, C0> + <dn0, n0>, its exact derivative (m0 only rescales the carried C0, n0), which
matches mlstm_recurrent(grad="stopgrad"). The returned final m is non-differentiable (a constant),
so a gradient on it is dropped; chained calls that carry the state therefore reproduce the
gradients of one pass over the whole sequence.

grad="exact" runs the same forward under plain autograd (through max, the normaliser and m).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import check_eps, check_sequence_inputs, check_state, compute_dtype, zero_state
from .chunk_rules import chunk_size_problem

_NEG = -1e30  # input-gate value of padded tail steps: exp(_NEG - m) == 0, and no -inf arithmetic


def _forward(q_scaled, k, v, i, logf, C0, n0, m0, eps, keep_for_backward):
    """Chunked forward on [X, NC, L, *] tensors (X = B*H, q_scaled already scaled). States C0 [X,Dqk,Dv],
    n0 [X,Dqk], m0 [X].

    The gate path (i, logf, m0 and everything derived from them) is float64 whatever the compute
    dtype: it is O(S) work, and the in-chunk log weights b_t - b_j + i_j - m_t cancel terms of
    size up to chunk_size * |log f|, which costs fp32 about 1e-3 relative error at saturated gates.

    Runs in place where it may (no autograd), out of place under autograd (grad="exact").
    Returns (h [X,NC,L,Dv], C [X,Dqk,Dv], n [X,Dqk], m [X] float64, saved dict or None)."""
    X, NC, L, Dqk = q_scaled.shape
    Dv = v.shape[-1]
    in_place = not torch.is_grad_enabled()
    work_dtype = q_scaled.dtype
    bmm_view = lambda t: t.reshape(X * NC, *t.shape[2:])  # noqa: E731  (views: inputs are contiguous)

    b = logf.cumsum(-1)  # [X,NC,L]
    g = b[..., -1]  # [X,NC]
    a = g[..., None] - b + i  # log weight of write j at the end of its chunk
    amax = a.max(-1).values

    # Stabiliser scan over chunks: m before chunk c at index c, final m at index NC.
    m_list = [m0]
    for c in range(NC):
        m_list.append(torch.maximum(g[:, c] + m_list[-1], amax[:, c]))
    mb = torch.stack(m_list, dim=-1)  # [X,NC+1]
    decay = torch.exp(g + mb[:, :-1] - mb[:, 1:]).to(work_dtype)  # [X,NC], <= 1
    E = torch.exp(a - mb[:, 1:, None]).to(work_dtype)  # [X,NC,L], <= 1: weight of write j in the chunk's end state
    kw = k * E[..., None]
    C_loc = torch.bmm(bmm_view(kw).transpose(-1, -2), bmm_view(v)).view(X, NC, Dqk, Dv)
    n_loc = kw.sum(2)  # [X,NC,Dqk]

    # State recurrence: one fused multiply-add per chunk (n alike, Dqk-sized).
    if in_place:
        Cprev = torch.empty(X, NC, Dqk, Dv, dtype=work_dtype, device=q_scaled.device)
        nprev = torch.empty(X, NC, Dqk, dtype=work_dtype, device=q_scaled.device)
        Cprev[:, 0], nprev[:, 0] = C0, n0
        Cv, Cl, nv, nl = Cprev.unbind(1), C_loc.unbind(1), nprev.unbind(1), n_loc.unbind(1)
        dC, dn = decay[..., None, None].unbind(1), decay[..., None].unbind(1)
        for c in range(NC - 1):
            torch.addcmul(Cl[c], dC[c], Cv[c], out=Cv[c + 1])
            torch.addcmul(nl[c], dn[c], nv[c], out=nv[c + 1])
        C_last = torch.addcmul(Cl[-1], dC[-1], Cv[-1])
        n_last = torch.addcmul(nl[-1], dn[-1], nv[-1])
    else:
        C_list, n_list = [C0], [n0]
        for c in range(NC):
            C_list.append(torch.addcmul(C_loc[:, c], decay[:, c, None, None], C_list[-1]))
            n_list.append(torch.addcmul(n_loc[:, c], decay[:, c, None], n_list[-1]))
        Cprev, C_last = torch.stack(C_list[:-1], dim=1), C_list[-1]
        nprev, n_last = torch.stack(n_list[:-1], dim=1), n_list[-1]

    # Intra-chunk, all chunks at once. logD_tj = b_t - b_j + i_j = b_t + w_j, so the row max is a cummax.
    w = i - b
    m_inter = b + mb[:, :-1, None]
    m_t = torch.maximum(m_inter, b + w.cummax(-1).values)
    inter = torch.exp(m_inter - m_t).to(work_dtype)  # [X,NC,L], weight of the carried state in row t
    D = ((b - m_t)[..., :, None] + w[..., None, :]).to(work_dtype)
    QK = torch.bmm(bmm_view(q_scaled), bmm_view(k).transpose(-1, -2))
    if in_place:
        D = D.exp_().tril_()  # entries above the diagonal may overflow to inf before tril_ zeroes them
        Smat = QK.mul_(bmm_view(D))
    else:
        causal = torch.ones(L, L, dtype=torch.bool, device=q_scaled.device).tril()
        D = D.masked_fill(~causal, float("-inf")).exp()
        Smat = QK * bmm_view(D)
    qsi = q_scaled * inter[..., None]
    num = torch.bmm(Smat, bmm_view(v)).baddbmm_(bmm_view(qsi), bmm_view(Cprev)).view(X, NC, L, Dv)
    den = Smat.sum(-1).view(X, NC, L) + (qsi * nprev[:, :, None, :]).sum(-1)
    norm = torch.maximum(den.abs(), torch.exp(-m_t).to(work_dtype)) + eps
    h = num.div_(norm[..., None]) if in_place else num / norm[..., None]
    saved = None
    if keep_for_backward:
        saved = dict(D=D, Smat=Smat, Cprev=Cprev, decay=decay, E=E, kw=kw, qsi=qsi, inter=inter, norm=norm)
    return h, C_last, n_last, mb[:, -1], saved


def _backward(q_scaled, k, v, saved, dh, dC_last, dn_last):
    """Hand-written stopgrad backward on [X,NC,L,*]. Returns dqs, dk, dv, dC0, dn0 (dn0 may be None)."""
    D, Smat, Cprev, decay, E, kw, qsi, inter, norm = (
        saved[x] for x in ("D", "Smat", "Cprev", "decay", "E", "kw", "qsi", "inter", "norm"))
    X, NC, L, Dqk = q_scaled.shape
    Dv = v.shape[-1]
    bmm_view = lambda t: t.reshape(X * NC, *t.shape[2:])  # noqa: E731
    dhn = dh / norm[..., None]  # n feeds only the (constant) normaliser: no gradient to n from h

    # Reverse state-gradient recurrence: Gout[c] = dL/d(C leaving chunk c).
    loc = torch.bmm(bmm_view(qsi).transpose(-1, -2), bmm_view(dhn)).view(X, NC, Dqk, Dv)
    Gout = torch.empty(X, NC, Dqk, Dv, dtype=q_scaled.dtype, device=q_scaled.device)
    Gout[:, -1] = dC_last
    views, locs, decs = Gout.unbind(1), loc.unbind(1), decay[..., None, None].unbind(1)
    for c in range(NC - 1, 0, -1):
        torch.addcmul(locs[c], decs[c], views[c], out=views[c - 1])
    dC0 = torch.addcmul(locs[0], decs[0], views[0])

    dhn3 = bmm_view(dhn)
    dS = torch.bmm(dhn3, bmm_view(v).transpose(-1, -2)).mul_(bmm_view(D))
    dqs = torch.bmm(dS, bmm_view(k)).baddbmm_(dhn3 * bmm_view(inter)[..., None], bmm_view(Cprev).transpose(-1, -2))
    dk = torch.bmm(dS.transpose(-1, -2), bmm_view(q_scaled)).baddbmm_(
        bmm_view(v * E[..., None]), bmm_view(Gout).transpose(-1, -2)).view(X, NC, L, Dqk)
    dv = torch.bmm(Smat.transpose(-1, -2), dhn3).baddbmm_(bmm_view(kw), bmm_view(Gout))
    dn0 = None
    if dn_last is not None:  # n's gradient only flows back from the returned final n, through the decays
        tail = decay.flip(1).cumprod(1).flip(1)  # [X,NC]: product of decays from chunk c to the end
        Gn_out = dn_last[:, None, :] * torch.cat([tail[:, 1:], torch.ones_like(tail[:, :1])], 1)[..., None]
        dk.add_(E[..., None] * Gn_out[:, :, None, :])
        dn0 = dn_last * tail[:, :1]
    return dqs.view(X, NC, L, Dqk), dk, dv.view(X, NC, L, Dv), dC0, dn0


def _split(x: torch.Tensor, L: int, pad_value: float = 0.0) -> torch.Tensor:
    """[B,H,S,*] or [B,H,S] -> contiguous [B*H, NC, L, *] / [B*H, NC, L], padding the tail chunk."""
    S = x.shape[2]
    pad = (-S) % L
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad), value=pad_value)
    return x.reshape(x.shape[0] * x.shape[1], -1, L, *x.shape[3:]).contiguous()


def _merge(x: torch.Tensor, B: int, S: int) -> torch.Tensor:
    """[B*H, NC, L, *] -> [B, H, S, *] (drops the padded tail)."""
    return x.reshape(B, -1, x.shape[1] * x.shape[2], *x.shape[3:])[:, :, :S]


def _prepare(q, k, v, i, f, L):
    gd = torch.float64  # gate path, see _forward
    return (_split(q * q.shape[-1] ** -0.5, L), _split(k, L), _split(v, L), _split(i.to(gd), L, _NEG),
            _split(F.logsigmoid(f.to(gd)), L))


class _MLSTMChunkStopgrad(torch.autograd.Function):
    """Chunkwise mLSTM with the stopgrad backward; all tensors in the compute dtype."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, L, eps):
        B, H, S, Dqk = q.shape
        Dv = v.shape[-1]
        q_scaled, kc, vc, ic, logf = _prepare(q, k, v, i, f, L)
        C0_chunk, n0x = C0.reshape(B * H, Dqk, Dv), n0.reshape(B * H, Dqk)
        h, C, n, m, saved = _forward(q_scaled, kc, vc, ic, logf, C0_chunk, n0x, m0.flatten().to(torch.float64), eps, True)
        ctx.save_for_backward(q_scaled, kc, vc, C, n, f, C0_chunk, n0x, *saved.values())
        ctx.saved_keys = tuple(saved.keys())
        ctx.B, ctx.S = B, S
        m = m.view(B, H).to(q.dtype)
        ctx.mark_non_differentiable(m)
        return _merge(h, B, S), C.view(B, H, Dqk, Dv), n.view(B, H, Dqk), m

    @staticmethod
    def backward(ctx, dh, dC, dn, dm):
        q_scaled, kc, vc, C, n, f, C0_chunk, n0x, *rest = ctx.saved_tensors
        saved = dict(zip(ctx.saved_keys, rest))
        B, S = ctx.B, ctx.S
        X, NC, L, Dqk = q_scaled.shape
        H, Dv = X // B, vc.shape[-1]
        dC = torch.zeros_like(C) if dC is None else dC.reshape(X, Dqk, Dv)
        dn = None if dn is None else dn.reshape(X, Dqk)
        if dh is None:
            dh = torch.zeros(B, H, S, Dv, dtype=q_scaled.dtype, device=q_scaled.device)
        dqs, dk, dv, dC0, dn0 = _backward(q_scaled, kc, vc, saved, _split(dh, L), dC, dn)
        # Gate gradients from the stopgrad identity (module docstring); [X, NC*L].
        kdk = (kc * dk).sum(-1).flatten(1)
        x = ((q_scaled * dqs).sum(-1).flatten(1) - kdk).to(torch.float64)  # O(S) scan: keep it exact
        tail = (C * dC).sum((-2, -1)) + (0 if dn is None else (n * dn).sum(-1))
        dlogf = x.flip(-1).cumsum(-1).flip(-1) + tail[:, None]
        di = kdk[:, :S].reshape(B, H, S)
        df = (dlogf[:, :S].reshape(B, H, S) * torch.sigmoid(-f.to(torch.float64))).to(q_scaled.dtype)
        dq = _merge(dqs, B, S) * q_scaled.shape[-1] ** -0.5
        # m0 only rescales the carried (C0, n0): its derivative is <dC0, C0> + <dn0, n0>.
        dm0 = (dC0 * C0_chunk).sum((-2, -1)) + (0 if dn0 is None else (dn0 * n0x).sum(-1))
        dn0 = torch.zeros_like(n0x) if dn0 is None else dn0
        return (dq, _merge(dk, B, S), _merge(dv, B, S), di, df, dC0.view(B, H, Dqk, Dv), dn0.view(B, H, Dqk),
                dm0.view(B, H), None, None)


def _chunk_plain(q, k, v, i, f, C0, n0, m0, L, eps):
    B, H, S, Dqk = q.shape
    Dv = v.shape[-1]
    q_scaled, kc, vc, ic, logf = _prepare(q, k, v, i, f, L)
    h, C, n, m, _ = _forward(q_scaled, kc, vc, ic, logf, C0.reshape(B * H, Dqk, Dv), n0.reshape(B * H, Dqk),
                             m0.flatten().to(torch.float64), eps, False)
    return _merge(h, B, S), C.view(B, H, Dqk, Dv), n.view(B, H, Dqk), m.view(B, H).to(q.dtype)


def mlstm_chunkwise(q, k, v, i, f, chunk_size=64, initial_state=None, eps=1e-6, grad="stopgrad"):
    """Chunkwise-parallel mLSTM over [B,H,S,D] inputs, any S (the tail chunk is padded inside).

    q, k [B,H,S,Dqk]; v [B,H,S,Dv]; i, f [B,H,S] gate pre-activations; initial_state (C, n, m) or
    None (zeros); chunk_size: any positive int (chunk_size_problem("torch", ...)). grad: "stopgrad"
    (normaliser and m constant in backward, hand-written backward) or "exact" (plain autograd).
    Returns (h [B,H,S,Dv] in q's dtype, (C, n, m) in the compute dtype). Gradients reach the
    initial (C, n, m) in both modes; the returned m is non-differentiable with grad="stopgrad"
    (module docstring). Without autograd (no_grad, or no input requiring grad) both
    modes run the same in-place forward."""
    check_eps(eps)
    if grad not in ("stopgrad", "exact"):
        raise ValueError(f"mlstm_chunkwise: grad must be 'stopgrad' or 'exact', got {grad!r}")
    B, H, S, Dqk, Dv = check_sequence_inputs(q, k, v, i, f)
    problem = chunk_size_problem("torch", chunk_size, S)
    if problem:
        raise ValueError(f"mlstm_chunkwise: {problem}")
    work_dtype = compute_dtype(q, k, v, i, f, *(initial_state if initial_state is not None else ()))
    if initial_state is None:
        initial_state = zero_state(B, H, Dqk, Dv, work_dtype, q.device)
    check_state(initial_state, B, H, Dqk, Dv)
    C0, n0, m0 = (s.to(work_dtype) for s in initial_state)
    L = min(chunk_size, S)
    args = [t.to(work_dtype) for t in (q, k, v, i, f)]
    needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in (*args, C0, n0, m0))
    if not needs_graph:  # inference / prefill: both modes are the same in-place forward
        with torch.no_grad():
            h, C, n, m = _chunk_plain(*args, C0, n0, m0, L, eps)
    elif grad == "exact":
        h, C, n, m = _chunk_plain(*args, C0, n0, m0, L, eps)
    else:
        h, C, n, m = _MLSTMChunkStopgrad.apply(*args, C0, n0, m0, L, eps)
    return h.to(q.dtype), (C, n, m)
