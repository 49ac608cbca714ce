"""Chunkwise-parallel mLSTM: the training path on CPU.

Per chunk of L steps (b_t = inclusive cumsum of log f inside the chunk, g = b_L):

  inter-chunk (a loop over S/L chunks, elementwise only):
      m_k = max(g_k + m_{k-1}, max_j a_j),  a_j = g_k - b_j + i_j
      C_k = exp(g_k + m_{k-1} - m_k) C_{k-1} + exp(max_j a_j - m_k) * sum_j exp(a_j - max_j a_j) k_j v_j^T
  intra-chunk (batched matmuls over all chunks at once):
      m_t = max(b_t + m_{k-1}, b_t + max_{j<=t}(i_j - b_j))
      h_t = [sum_{j<=t} (q_t.k_j) e^{b_t-b_j+i_j-m_t} v_j + e^{b_t+m_{k-1}-m_t} C_{k-1}^T q_t] / norm_t

n rides along as an extra value column (v_aug = [v | 1], state [C | n]), so one matmul and one
loop step serve both. The per-chunk local write term uses its own stabiliser max_j a_j, so all
chunks are computed in one batched matmul before the loop.

grad="stopgrad" (default) differentiates with norm_t and every m held constant, the convention of
mlstm_kernels' custom backward (research/mlstm.md §1.5). Its backward is written by hand:
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

from ._common import State, check_eps, check_sequence_inputs, check_state, compute_dtype, zero_state

_NEG = -1e30  # input-gate value of padded tail steps: exp(_NEG - m) == 0, and no -inf arithmetic


def _forward(qs, k, v_aug, i, logf, C0aug, m0, eps, keep_for_backward):
    """Chunked forward on [X, NC, L, *] tensors (X = B*H; qs already scaled; v_aug = [v | 1]).

    The gate path (i, logf, m0 and everything derived from them) is float64 whatever the compute
    dtype: it is O(S) work, and the in-chunk log weights b_t - b_j + i_j - m_t cancel terms of
    size up to chunk_size * |log f|, which costs fp32 about 1e-3 relative error at saturated gates.

    Runs in place where it may (no autograd), out of place under autograd (grad="exact").
    Returns (h [X,NC,L,Dv], final state aug [X,Dqk,Dv+1], final m [X], saved dict or None)."""
    X, NC, L, Dqk = qs.shape
    Dv1 = v_aug.shape[-1]
    ip = not torch.is_grad_enabled()
    cd = qs.dtype
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
    decay = torch.exp(g + mb[:, :-1] - mb[:, 1:]).to(cd)  # [X,NC], <= 1
    E = torch.exp(a - mb[:, 1:, None]).to(cd)  # [X,NC,L], <= 1
    kw = k * E[..., None]
    C_loc = torch.bmm(bmm_view(kw).transpose(-1, -2), bmm_view(v_aug)).view(X, NC, Dqk, Dv1)

    # State recurrence: one fused multiply-add per chunk.
    if ip:
        Cprev = torch.empty(X, NC, Dqk, Dv1, dtype=qs.dtype, device=qs.device)
        Cprev[:, 0] = C0aug
        views, locs, decs = Cprev.unbind(1), C_loc.unbind(1), decay[..., None, None].unbind(1)
        for c in range(NC - 1):
            torch.addcmul(locs[c], decs[c], views[c], out=views[c + 1])
        C_last = torch.addcmul(locs[-1], decs[-1], views[-1])
    else:
        C_list = [C0aug]
        for c in range(NC):
            C_list.append(torch.addcmul(C_loc[:, c], decay[:, c, None, None], C_list[-1]))
        Cprev, C_last = torch.stack(C_list[:-1], dim=1), C_list[-1]

    # Intra-chunk, all chunks at once. logD_tj = b_t - b_j + i_j = b_t + w_j, so the row max is a cummax.
    w = i - b
    m_inter = b + mb[:, :-1, None]
    m_t = torch.maximum(m_inter, b + w.cummax(-1).values)
    inter = torch.exp(m_inter - m_t).to(cd)  # [X,NC,L], weight of the carried state in row t
    causal = torch.ones(L, L, dtype=torch.bool, device=qs.device).tril()
    D = ((b - m_t)[..., :, None] + w[..., None, :]).to(cd)
    QK = torch.bmm(bmm_view(qs), bmm_view(k).transpose(-1, -2))
    if ip:
        D = D.exp_().tril_()  # entries above the diagonal may overflow to inf before tril_ zeroes them
        Smat = QK.mul_(bmm_view(D))
    else:
        D = D.masked_fill(~causal, float("-inf")).exp()
        Smat = QK * bmm_view(D)
    qsi = qs * inter[..., None]
    num = torch.bmm(Smat, bmm_view(v_aug)).baddbmm_(bmm_view(qsi), bmm_view(Cprev)).view(X, NC, L, Dv1)
    norm = torch.maximum(num[..., -1].abs(), torch.exp(-m_t).to(cd)) + eps
    h = num[..., :-1] / norm[..., None]
    saved = None
    if keep_for_backward:
        saved = dict(D=D, Smat=Smat, Cprev=Cprev, decay=decay, E=E, kw=kw, qsi=qsi, inter=inter, norm=norm)
    return h, C_last, mb[:, -1], saved


def _backward(qs, k, v_aug, saved, dh, dCaug_last):
    """Hand-written stopgrad backward on [X,NC,L,*]. Returns dqs, dk, dv_aug, dCaug0."""
    D, Smat, Cprev, decay, E, kw, qsi, inter, norm = (
        saved[x] for x in ("D", "Smat", "Cprev", "decay", "E", "kw", "qsi", "inter", "norm"))
    X, NC, L, Dqk = qs.shape
    Dv1 = v_aug.shape[-1]
    bmm_view = lambda t: t.reshape(X * NC, *t.shape[2:])  # noqa: E731
    dhn = torch.empty(X, NC, L, Dv1, dtype=qs.dtype, device=qs.device)
    torch.div(dh, norm[..., None], out=dhn[..., :-1])
    dhn[..., -1] = 0  # n feeds only the (constant) normaliser

    # Reverse state-gradient recurrence: Gout[c] = dL/d(state leaving chunk c).
    loc = torch.bmm(bmm_view(qsi).transpose(-1, -2), bmm_view(dhn)).view(X, NC, Dqk, Dv1)
    Gout = torch.empty(X, NC, Dqk, Dv1, dtype=qs.dtype, device=qs.device)
    Gout[:, -1] = dCaug_last
    views, locs, decs = Gout.unbind(1), loc.unbind(1), decay[..., None, None].unbind(1)
    for c in range(NC - 1, 0, -1):
        torch.addcmul(locs[c], decs[c], views[c], out=views[c - 1])
    dC0 = torch.addcmul(locs[0], decs[0], views[0])

    dhn3 = bmm_view(dhn)
    dS = torch.bmm(dhn3, bmm_view(v_aug).transpose(-1, -2)).mul_(bmm_view(D))
    dqs = torch.bmm(dS, bmm_view(k)).baddbmm_(dhn3 * bmm_view(inter)[..., None], bmm_view(Cprev).transpose(-1, -2))
    dk = torch.bmm(dS.transpose(-1, -2), bmm_view(qs)).baddbmm_(
        bmm_view(v_aug * E[..., None]), bmm_view(Gout).transpose(-1, -2))
    dv = torch.bmm(Smat.transpose(-1, -2), dhn3).baddbmm_(bmm_view(kw), bmm_view(Gout))
    shape = (X, NC, L)
    return dqs.view(*shape, Dqk), dk.view(*shape, Dqk), dv.view(*shape, Dv1), dC0


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


def _prepare(q, k, v, i, f, C0, n0, L):
    scale = q.shape[-1] ** -0.5
    v_aug = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    C0aug = torch.cat([C0, n0[..., None]], dim=-1)
    gd = torch.float64  # gate path, see _forward
    return (_split(q * scale, L), _split(k, L), _split(v_aug, L), _split(i.to(gd), L, _NEG),
            _split(F.logsigmoid(f.to(gd)), L), C0aug.flatten(0, 1))


class _MLSTMChunkStopgrad(torch.autograd.Function):
    """Chunkwise mLSTM with the stopgrad backward; all tensors in the compute dtype."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, L, eps):
        B, H, S, _ = q.shape
        qs, kc, va, ic, logf, C0aug = _prepare(q, k, v, i, f, C0, n0, L)
        m0 = m0.flatten().to(torch.float64)
        h, Caug, m, saved = _forward(qs, kc, va, ic, logf, C0aug, m0, eps, keep_for_backward=True)
        C, n, m = Caug[..., :-1].reshape(C0.shape), Caug[..., -1].reshape(n0.shape), m.view(B, H).to(q.dtype)
        ctx.save_for_backward(qs, kc, va, Caug, f, C0aug, *saved.values())
        ctx.saved_keys = tuple(saved.keys())
        ctx.B, ctx.S = B, S
        ctx.mark_non_differentiable(m)
        return _merge(h, B, S), C, n, m

    @staticmethod
    def backward(ctx, dh, dC, dn, dm):
        qs, kc, va, Caug, f, C0aug, *rest = ctx.saved_tensors
        saved = dict(zip(ctx.saved_keys, rest))
        B, S = ctx.B, ctx.S
        X, NC, L, Dqk = qs.shape
        H, Dv = X // B, va.shape[-1] - 1
        dCaug = torch.zeros_like(Caug)
        if dC is not None:
            dCaug[..., :-1] = dC.reshape(X, Dqk, Dv)
        if dn is not None:
            dCaug[..., -1] = dn.reshape(X, Dqk)
        if dh is None:
            dh = torch.zeros(B, H, S, Dv, dtype=qs.dtype, device=qs.device)
        dqs, dk, dva, dC0aug = _backward(qs, kc, va, saved, _split(dh, L), dCaug)
        # Gate gradients from the stopgrad identity (module docstring); [X, NC*L].
        kdk = (kc * dk).sum(-1).flatten(1)
        x = ((qs * dqs).sum(-1).flatten(1) - kdk).to(torch.float64)  # O(S) scan: keep it exact
        dlogf = x.flip(-1).cumsum(-1).flip(-1) + (Caug * dCaug).sum((-2, -1))[:, None]
        di = kdk[:, :S].reshape(B, H, S)
        df = (dlogf[:, :S].reshape(B, H, S) * torch.sigmoid(-f.to(torch.float64))).to(qs.dtype)
        dq = _merge(dqs, B, S) * qs.shape[-1] ** -0.5
        dm0 = (dC0aug * C0aug).sum((-2, -1)).view(B, H)  # m0 only rescales the carried (C0, n0)
        dC0 = dC0aug[..., :-1].reshape(B, H, Dqk, Dv)
        dn0 = dC0aug[..., -1].reshape(B, H, Dqk)
        return dq, _merge(dk, B, S), _merge(dva[..., :-1], B, S), di, df, dC0, dn0, dm0, None, None


def _chunk_plain(q, k, v, i, f, C0, n0, m0, L, eps):
    B, H, S, _ = q.shape
    qs, kc, va, ic, logf, C0aug = _prepare(q, k, v, i, f, C0, n0, L)
    h, Caug, m, _ = _forward(qs, kc, va, ic, logf, C0aug, m0.flatten().to(torch.float64), eps, keep_for_backward=False)
    m = m.view(B, H).to(q.dtype)
    return _merge(h, B, S), Caug[..., :-1].reshape(C0.shape), Caug[..., -1].reshape(n0.shape), m


def mlstm_chunkwise(q, k, v, i, f, chunk_size=64, initial_state=None, eps=1e-6, grad="stopgrad"):
    """Chunkwise-parallel mLSTM over [B,H,S,D] inputs, any S (the tail chunk is padded inside).

    q, k [B,H,S,Dqk]; v [B,H,S,Dv]; i, f [B,H,S] gate pre-activations; initial_state (C, n, m) or
    None (zeros). grad: "stopgrad" (normaliser and m constant in backward, hand-written backward)
    or "exact" (plain autograd). Returns (h [B,H,S,Dv] in q's dtype, (C, n, m) in the compute dtype).
    Gradients reach the initial (C, n, m) in both modes; the returned m is non-differentiable with
    grad="stopgrad" (module docstring). Without autograd (no_grad, or no input requiring grad) both
    modes run the same in-place forward."""
    check_eps(eps)
    if grad not in ("stopgrad", "exact"):
        raise ValueError(f"mlstm_chunkwise: grad must be 'stopgrad' or 'exact', got {grad!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"mlstm_chunkwise: chunk_size must be a positive int, got {chunk_size!r}")
    B, H, S, Dqk, Dv = check_sequence_inputs(q, k, v, i, f)
    cd = compute_dtype(q, k, v, i, f, *(initial_state if initial_state is not None else ()))
    if initial_state is None:
        initial_state = zero_state(B, H, Dqk, Dv, cd, q.device)
    check_state(initial_state, B, H, Dqk, Dv)
    C0, n0, m0 = (s.to(cd) for s in initial_state)
    L = min(chunk_size, S)
    args = [t.to(cd) for t in (q, k, v, i, f)]
    needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in (*args, C0, n0, m0))
    if not needs_graph:  # inference / prefill: both modes are the same in-place forward
        with torch.no_grad():
            h, C, n, m = _chunk_plain(*args, C0, n0, m0, L, eps)
    elif grad == "exact":
        h, C, n, m = _chunk_plain(*args, C0, n0, m0, L, eps)
    else:
        h, C, n, m = _MLSTMChunkStopgrad.apply(*args, C0, n0, m0, L, eps)
    return h.to(q.dtype), (C, n, m)
