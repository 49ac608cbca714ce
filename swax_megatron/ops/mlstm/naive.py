"""Plain mLSTM references: the step, the step loop (ground truth) and the quadratic form.

Cell (xLSTM-7B / mlstm_kernels): exponential input gate exp(i), sigmoid forget gate used as
logsigmoid(f), stabiliser m, state C = sum k v^T (shape [Dqk, Dv]), q scaled by Dqk**-0.5:

    m_t = max(log f_t + m_{t-1}, i_t)
    C_t = exp(log f_t + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) k_t v_t^T      (n_t alike with k_t)
    h_t = C_t^T q_t / (max(|n_t^T q_t|, exp(-m_t)) + eps)

The stored (C, n) are the unstabilised state times exp(-m), so h does not depend on m except
through eps. All functions here use plain autograd ("exact" gradients) unless told otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import check_eps, check_sequence_inputs, check_state, compute_dtype, zero_state


def _step(q, k, v, i, f, C, n, m, eps, stopgrad=False):
    """One stabilised step in the compute dtype. q, k [B,H,Dqk], v [B,H,Dv], i, f [B,H]."""
    logf = F.logsigmoid(f)
    m_new = torch.maximum(logf + m, i)
    if stopgrad:
        m_new = m_new.detach()
    fs = torch.exp(logf + m - m_new)
    ig = torch.exp(i - m_new)
    C = fs[..., None, None] * C + ig[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = fs[..., None] * n + ig[..., None] * k
    q_scaled = q * q.shape[-1] ** -0.5
    num = torch.einsum("bhd,bhde->bhe", q_scaled, C)
    den = (n * q_scaled).sum(-1)
    norm = torch.maximum(den.abs(), torch.exp(-m_new)) + eps
    if stopgrad:
        norm = norm.detach()
    return num / norm[..., None], C, n, m_new


def mlstm_step(q, k, v, i, f, state, eps=1e-6):
    """One generation step. q, k [B,H,Dqk]; v [B,H,Dv]; i, f [B,H] gate pre-activations;
    state (C, n, m) or None for the zero state. Returns (h [B,H,Dv], (C, n, m))."""
    check_eps(eps)
    if q.dim() != 3:
        raise ValueError(f"mlstm_step: q must be [B, H, Dqk] (one token), got shape {tuple(q.shape)}")
    B, H, Dqk = q.shape
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"mlstm_step: {name} must be [B, H, D] (one token), got {getattr(t, 'shape', t)}")
    for name, t in (("i", i), ("f", f)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"mlstm_step: {name} must be [B, H] (one token), got {getattr(t, 'shape', t)}")
    # Reuse the sequence checks on a length-1 view.
    _, _, _, _, Dv = check_sequence_inputs(q[:, :, None], k[:, :, None], v[:, :, None], i[..., None], f[..., None])
    work_dtype = compute_dtype(q, k, v, i, f, *(state if state is not None else ()))
    if state is None:
        state = zero_state(B, H, Dqk, Dv, work_dtype, q.device)
    check_state(state, B, H, Dqk, Dv, what="state")
    C, n, m = (s.to(work_dtype) for s in state)
    h, C, n, m = _step(q.to(work_dtype), k.to(work_dtype), v.to(work_dtype), i.to(work_dtype), f.to(work_dtype), C, n, m, eps)
    return h.to(q.dtype), (C, n, m)


def mlstm_recurrent(q, k, v, i, f, initial_state=None, eps=1e-6, *, grad="exact"):
    """Step loop over [B,H,S,D] inputs; the ground truth. Returns (h [B,H,S,Dv], (C, n, m)).

    grad="stopgrad" detaches every m and the normaliser: the reference for the gradients of
    mlstm_chunkwise(grad="stopgrad"), including those of the initial and final states."""
    check_eps(eps)
    if grad not in ("exact", "stopgrad"):
        raise ValueError(f"mlstm_recurrent: grad must be 'exact' or 'stopgrad', got {grad!r}")
    B, H, S, Dqk, Dv = check_sequence_inputs(q, k, v, i, f)
    work_dtype = compute_dtype(q, k, v, i, f, *(initial_state if initial_state is not None else ()))
    if initial_state is None:
        initial_state = zero_state(B, H, Dqk, Dv, work_dtype, q.device)
    check_state(initial_state, B, H, Dqk, Dv)
    C, n, m = (s.to(work_dtype) for s in initial_state)
    out_dtype = q.dtype
    q, k, v, i, f = (t.to(work_dtype) for t in (q, k, v, i, f))
    hs = []
    for t in range(S):
        h, C, n, m = _step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], C, n, m, eps, grad == "stopgrad")
        hs.append(h)
    return torch.stack(hs, dim=2).to(out_dtype), (C, n, m)


def _segsum(x: torch.Tensor) -> torch.Tensor:
    """out[..., t, j] = sum_{r=j+1..t} x[..., r] for j <= t, -inf above the diagonal.

    Built as a cumulative sum of a masked matrix, not as cumsum_t - cumsum_j, so long
    sequences do not lose precision by cancellation."""
    T = x.shape[-1]
    strict = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    xr = x[..., :, None].expand(*x.shape, T).masked_fill(~strict, 0.0)  # [..., r, j] = x_r for r > j
    out = xr.cumsum(dim=-2)
    return out.masked_fill(~torch.ones_like(strict).tril(), float("-inf"))


def mlstm_parallel(q, k, v, i, f, eps=1e-6, *, grad="exact"):
    """Quadratic form with stable segment sums, from the zero state (m = 0); for tests only.

    The zero initial state is kept as a virtual column j = 0 (log weight = sum of log f up to t,
    value zero) so the stabiliser, and therefore eps, match the recurrent form exactly.
    grad="stopgrad" detaches the normaliser max(|n^T q|, exp(-m)) and m: the convention of
    mlstm_chunkwise(grad="stopgrad") and of mlstm_kernels' custom backward kernels."""
    check_eps(eps)
    if grad not in ("exact", "stopgrad"):
        raise ValueError(f"mlstm_parallel: grad must be 'exact' or 'stopgrad', got {grad!r}")
    B, H, S, Dqk, Dv = check_sequence_inputs(q, k, v, i, f)
    out_dtype = q.dtype
    work_dtype = compute_dtype(q, k, v, i, f)
    q, k, v, i, f = (t.to(work_dtype) for t in (q, k, v, i, f))
    logf = F.logsigmoid(f)
    zero = torch.zeros_like(logf[..., :1])
    seg = _segsum(torch.cat([zero, logf], dim=-1))[..., 1:, :]  # [B,H,S,S+1]; column 0 = the state
    logD = seg + torch.cat([zero, i], dim=-1)[..., None, :]  # + m0 (= 0) on column 0
    m = logD.max(dim=-1).values  # [B,H,S]
    if grad == "stopgrad":
        m = m.detach()
    D = torch.exp(logD - m[..., None])[..., 1:]  # the state column carries no value
    q_scaled = q * Dqk ** -0.5
    Smat = (q_scaled @ k.transpose(-1, -2)) * D
    den = Smat.sum(-1)
    norm = torch.maximum(den.abs(), torch.exp(-m)) + eps
    if grad == "stopgrad":
        norm = norm.detach()
    return ((Smat @ v) / norm[..., None]).to(out_dtype)
