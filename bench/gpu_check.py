#!/usr/bin/env python
"""One prepared GPU check: correctness, a training step per attention backend, and timings (H100 / H200).

    bash bench/gpu_check.sh fetch             # CPU machine with PyPI: the wheels the GPU machine lacks
    bash bench/gpu_check.sh run               # GPU machine: install them (hard time limit), then this script
    python bench/gpu_check.py                 # everything, within --budget seconds (default 450)
    python bench/gpu_check.py --only correct_bf16,own,tfla_xl
    python bench/gpu_check.py --aot           # no GPU needed: drive the real wrapper through a compile-only
                                              # driver for sm_90 / sm_80; ptxas registers, spills, shared
                                              # memory; exit 1 (one "aot: SPILL" / "aot: SMEM" line per
                                              # kernel) on any spill or a kernel over the arch's shared memory
    python bench/gpu_check.py --smoke         # no GPU needed: every case's code path on CPU under
                                              # TRITON_INTERPRET=1 with tiny shapes (numbers meaningless)

Each case runs in its own subprocess (own process session, own timeout, killed with its children when it
runs over), so a compiler abort or a hang loses only that case; it prints JSON lines that the parent collects
into a summary. Two phases:
1. in parallel (--jobs): correctness and training cases (not timings);
2. one at a time: the timings (triton.testing.do_bench medians, ms).

Correctness, against float64 references on the same dtype-rounded inputs (max|a-b| / max|b|):
- Triton mLSTM (`mlstm_recurrent(..., grad="stopgrad")`, the tests/ops reference): h, final C, n, m and the
  gradients of q, k, v, i, f, and of (C0, n0, m0) where an initial state is passed; the loss weighs h, the final
  C and the final n. Shapes: the recipe default (qk 256 x v 512, chunk 64), chunk 128 with an initial state, and
  48 x 80 with chunk 64 and an initial state (head dims that no tile width divides: the K/V masks; S=300: a
  ragged last chunk). bf16 h/states 1e-2, grads 3e-2; fp32 (tf32x3 dots) 1e-4; fp16 2e-2.
- SWA (`ops.swa` masked reference): FlexAttention (ops/swa/flex.py) and the torch path (ops.swa), forward and
  q/k/v gradients, bf16 2e-2 / 4e-2 and fp32 1e-4, windows around Flex's 128 block and full causal.
- Transformer Engine (if it imports): TESlidingWindowCoreAttention with the window set per call through
  `set_window` (and SwaxModel.set_swa_window on a TE-spec model), bf16 against the reference; a changed
  window must change the output.
- Training: one engine (megatron DDP + optimizer, swax_megatron.training.engine) per attention backend
  (torch, flex, te if installed) with 4 layers (XS*2) of the SWAX-1.4B shape (hidden 2048, 16 heads, 4 mLSTM
  heads qk 256 / v 512, chunk 64), sequence 16384, bf16: the loss forward only at windows 128 and 2048, then 3
  steps at windows 2048, 128, 2048; every weight matrix redrawn from a generator seeded by its name, so all
  backends start from the same weights. Each backend's losses must equal the torch backend's within 2e-3
  (absolute, nats) and its grad norms within 2e-2 (relative); peak memory, step times and MFU are recorded.
Timings at the anchors' shapes: bf16, B=8, S=8192 (65,536 tokens); mLSTM 8 heads x (qk 256, v 512), own
chunk 128 and 64 against mlstm_kernels' TFLA `chunkwise--triton_xl_chunk` (target: own fwd+bwd <= 0.9x TFLA;
research anchor on an H100: 18.6 ms); attention 32 heads x 128 at windows 128, 512, 2048: the torch SWA path,
TE (window per call) and SDPA against FlexAttention (target: no slower than Flex at every window); a SWAX-1.4B
layer pair (X + S, hidden 2048, S=16384) per window with peak memory and MFU.
Missing optional packages (mlstm_kernels, transformer_engine) give "skipped: reason" rows.
Exit status 1 when a correctness or training-comparison case fails or errors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

MARK = "@@GPU_CHECK@@ "
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFLA_ANCHOR_MS = 18.6  # mlstm_kernels xl_chunk (TFLA) fwd+bwd, bf16, 8 heads 256/512, S=8192 x B=8, chunk 128, measured
# with do_bench on one H100 80GB (torch 2.11.0+cu130, triton 3.6.0, mlstm_kernels 2.0.6)
B, S = 8, 8192
MH, DQK, DHV = 8, 256, 512  # mLSTM heads (xLSTM-7B)
AH, AD = 32, 128  # attention heads
WINDOWS = (128, 512, 2048)
# mLSTM correctness: (B, H, S, DK, DV, chunk, initial state passed)
CORRECT_SHAPES = [
    (1, 2, 512, DQK, DHV, 64, False),  # the recipe default: SWAX-1.4B / xLSTM-7B heads, chunk 64
    (1, 2, 512, DQK, DHV, 128, True),  # chunk 128 > 64-row inner blocks (TFLA's second level), state carried in
    (2, 2, 300, 48, 80, 64, True),  # no tile width divides 48 or 80: K/V masks in every kernel; ragged S
]
FP16_SHAPES = CORRECT_SHAPES[2:]
MLSTM_TOL = dict(bf16=(1e-2, 3e-2), fp16=(2e-2, 2e-2), fp32=(1e-4, 1e-4))  # (h and states, gradients)
SWA_SHAPE = (2, 4, 1000, AD)  # (B, H, S, D): S not a multiple of Flex's 128 block
SWA_WINDOWS = (1, 100, 128, 129, 640, None)
SWA_TOL = dict(bf16=(2e-2, 4e-2), fp32=(1e-4, 1e-4))  # (output, gradients)
TE_SHAPE = (2, 4, 1024, AD)  # (B, H, S, D); TE runs bf16 only
TE_WINDOWS = (128, 512, None)  # None: back to config.swa.window (2048 >= S: full causal)
# Training: 4 layers of the SWAX-1.4B recipe at its training length; windows of the 3 steps.
TRAIN_RECIPE = "recipes/models/swax_1p4b.yaml"
TRAIN_OVERRIDES = ["model.num_layers=4", "model.layer_pattern=XS*2"]
TRAIN_SEQ, TRAIN_WINDOWS, TRAIN_PRECISION = 16384, (2048, 128, 2048), "bf16"
TRAIN_LOSS_TOL, TRAIN_GN_TOL = 2e-3, 2e-2  # |loss - torch's| (nats), |gn - torch's| / torch's
PAIR_SEQ, PAIR_DIMS = 16384, (2048, 16, 4)  # (hidden, attention heads, mLSTM heads)
DEV = "cuda"
# --smoke: the same code paths on CPU under TRITON_INTERPRET=1 with tiny shapes, to test this script itself.
SMOKE = os.environ.get("GPU_CHECK_SMOKE") == "1"
if SMOKE:
    B, S, MH, DQK, DHV, AH, AD, WINDOWS, DEV = 1, 128, 1, 32, 64, 2, 16, (16, 32, 64), "cpu"
    CORRECT_SHAPES = [(1, 1, 96, 32, 64, 64, False), (1, 2, 50, 24, 40, 16, True)]
    FP16_SHAPES = CORRECT_SHAPES[1:]
    SWA_SHAPE, SWA_WINDOWS = (1, 2, 70, 16), (1, 16, 17, 40, None)
    TE_SHAPE, TE_WINDOWS = (1, 2, 64, 16), (16, 32, None)
    TRAIN_OVERRIDES = TRAIN_OVERRIDES + [
        "model.hidden_size=64", "model.num_attention_heads=2", "model.num_query_groups=2",
        "model.mlstm.num_heads=2", "model.vocab_size=512"]
    # megatron's Float16Module (bf16) takes CUDA tensors only: the smoke run trains in fp32
    TRAIN_SEQ, TRAIN_WINDOWS, TRAIN_PRECISION = 128, (32, 16, 32), "fp32"
    PAIR_SEQ, PAIR_DIMS = 128, (64, 2, 2)


def emit(**rec):
    print(MARK + json.dumps(rec), flush=True)


def rel(a, b) -> float:
    """max|a - b| / max|b| (b the reference; max|a - b| where b is all zero, e.g. dq at window 1, as tests/ops
    measures), inf when a has a NaN/Inf."""
    import torch

    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    scale = float(b.abs().max())
    diff = float((a - b).abs().max())
    return diff / scale if scale > 0 else diff


def _dtype(name):
    import torch

    return dict(bf16=torch.bfloat16, fp16=torch.float16, fp32=torch.float32)[name]


def _sync():
    import torch

    if DEV == "cuda":
        torch.cuda.synchronize()


def _peak_gb():
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else float("nan")


def _init_megatron(seed: int = 1234) -> None:
    """A one-rank process group on a free port (parallel cases must not share one) and megatron's model
    parallel state (TP = PP = 1), as the trainer sets them up."""
    import socket

    import torch

    from swax_megatron.parallel import cpu_compat
    from swax_megatron.training import distributed

    cpu_compat.apply()  # a no-op on GPU machines; lets --smoke run these cases on CPU
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if DEV == "cuda":
        torch.cuda.set_device(0)
    torch.distributed.init_process_group("nccl" if DEV == "cuda" else "gloo",
                                         init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    distributed.init_model_parallel(1, 1, seed)


def _teardown() -> None:
    from swax_megatron.training import distributed

    distributed.teardown()


# ------------------------------------------------------------------------------------- correctness: mLSTM
def _mlstm_inputs(torch, b, h, s, dk, dv, dtype, seed=0, requires_grad=True):
    g = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, device=DEV, dtype=torch.float32)  # noqa: E731
    x = [r(b, h, s, dk), r(b, h, s, dk), r(b, h, s, dv), r(b, h, s), 3.0 + 2.0 * r(b, h, s)]
    return [t.to(dtype).requires_grad_(requires_grad) for t in x]


def _mlstm_state(torch, b, h, dk, dv, seed=1):
    """An initial (C, n, m) as tests/ops passes it: float32, n >= 0."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, device=DEV, dtype=torch.float32)  # noqa: E731
    return r(b, h, dk, dv), r(b, h, dk).abs(), r(b, h)


def case_correct(dtype_name: str):
    """Triton mLSTM against the float64 stop-gradient step loop: outputs, final states and every gradient."""
    import torch

    from swax_megatron.ops.mlstm import mlstm_recurrent
    from swax_megatron.ops.mlstm.triton import mlstm_chunkwise_triton

    dtype = _dtype(dtype_name)
    tol_h, tol_g = MLSTM_TOL[dtype_name]
    shapes = FP16_SHAPES if dtype_name == "fp16" else CORRECT_SHAPES
    results = []
    for (b, h, s, dk, dv, cs, init) in shapes:
        x = _mlstm_inputs(torch, b, h, s, dk, dv, dtype, seed=s + dk)
        state = _mlstm_state(torch, b, h, dk, dv) if init else None
        g = torch.Generator(device=DEV).manual_seed(1234)
        f64 = torch.float64
        dh = torch.randn(b, h, s, dv, generator=g, device=DEV, dtype=f64)
        dC = torch.randn(b, h, dk, dv, generator=g, device=DEV, dtype=f64)
        dn = torch.randn(b, h, dk, generator=g, device=DEV, dtype=f64)
        out = []
        for run in ("ref", "triton"):
            dt = f64 if run == "ref" else dtype
            leaves = [t.detach().to(dt).requires_grad_() for t in x]
            st_leaves = [t.detach().to(f64 if run == "ref" else torch.float32).requires_grad_()
                         for t in (state or ())]
            st = tuple(st_leaves) if init else None
            if run == "ref":
                hh, (C, n, m) = mlstm_recurrent(*leaves, initial_state=st, grad="stopgrad")
            else:
                hh, (C, n, m) = mlstm_chunkwise_triton(*leaves, chunk_size=cs, initial_state=st)
            # h, the final C and the final n all reach the loss: every state-gradient path is exercised.
            loss = (hh.double() * dh).sum() + (C.double() * dC).sum() + (n.double() * dn).sum()
            grads = torch.autograd.grad(loss, leaves + st_leaves)
            names = ["dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"]
            out.append(dict(h=hh, C=C, n=n, m=m, **dict(zip(names, grads))))
            del leaves, st_leaves, hh, C, n, m, grads, loss
        ref, tri = out
        errs = {key: rel(tri[key], ref[key]) for key in ref}
        limits = {k: (tol_h if k in ("h", "C", "n", "m") else tol_g) for k in errs}
        ok = all(errs[k] <= limits[k] for k in errs)
        results.append(dict(shape=dict(B=b, H=h, S=s, DK=dk, DV=dv, chunk=cs, initial_state=init), errors=errs,
                            passed=ok))
        del out, ref, tri
        if DEV == "cuda":
            torch.cuda.empty_cache()
    emit(case=f"correct_{dtype_name}", status="ok", passed=all(r["passed"] for r in results),
         limits=dict(h_states=tol_h, grads=tol_g), results=results)


# --------------------------------------------------------------------------------------- correctness: SWA
def case_correct_swa():
    """FlexAttention and the torch SWA path against the float64 masked reference, forward and backward,
    bf16 and fp32. On CPU (--smoke) Flex runs forward only: torch has no CPU backward for it."""
    import torch

    from swax_megatron.ops.swa import sliding_window_attention
    from swax_megatron.ops.swa.flex import flex_sliding_window_attention

    b, h, s, d = SWA_SHAPE
    f64 = torch.float64
    kernels = (("flex", flex_sliding_window_attention), ("torch", sliding_window_attention))
    results = []
    for dtype_name in ("bf16", "fp32"):
        dtype = _dtype(dtype_name)
        tol_o, tol_g = SWA_TOL[dtype_name]
        g = torch.Generator(device=DEV).manual_seed(7)
        base = [torch.randn(b, h, s, d, generator=g, device=DEV).to(dtype).to(f64) for _ in range(3)]
        do = torch.randn(b, h, s, d, generator=g, device=DEV, dtype=f64)
        for w in SWA_WINDOWS:
            leaves = [t.clone().requires_grad_() for t in base]
            ref = sliding_window_attention(*leaves, w, impl="masked")
            ref_grads = torch.autograd.grad((ref * do).sum(), leaves)
            for impl, fn in kernels:
                backward = not (impl == "flex" and DEV == "cpu")
                xs = [t.to(dtype).requires_grad_(backward) for t in base]
                with torch.set_grad_enabled(backward):
                    out = fn(*xs, w)
                errs = dict(out=rel(out, ref))
                if backward:
                    gr = torch.autograd.grad((out.double() * do).sum(), xs)
                    errs.update({n: rel(a, r) for n, a, r in zip(("dq", "dk", "dv"), gr, ref_grads)})
                ok = all(e <= (tol_o if k == "out" else tol_g) for k, e in errs.items())
                results.append(dict(kernel=impl, dtype=dtype_name, window=w, errors=errs, passed=ok,
                                    backward=backward))
            del leaves, ref, ref_grads
    emit(case="correct_swa", status="ok", passed=all(r["passed"] for r in results),
         shape=dict(B=b, H=h, S=s, D=d), limits={k: dict(out=v[0], grads=v[1]) for k, v in SWA_TOL.items()},
         results=results)


# ----------------------------------------------------------------------------------- Transformer Engine
def _te_missing(cases) -> bool:
    from swax_megatron.models.attention import have_transformer_engine

    if have_transformer_engine():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
        reason = "transformer_engine imports only partly"
    except Exception as e:  # noqa: BLE001
        reason = f"transformer_engine does not import ({type(e).__name__}: {str(e)[:200]})"
    for c in cases:
        emit(case=c, status="skipped", reason=reason)
    return True


def _te_core_attention(heads: int, head_dim: int, window: int):
    """The TE core attention of S layers as the TE spec builds it (window from config.swa, changed per call
    with set_window)."""
    import torch

    from swax_megatron.config.schema import SwaConfig
    from swax_megatron.models import SwaxConfig
    from swax_megatron.models.te_attention import TESlidingWindowCoreAttention

    cfg = SwaxConfig(num_layers=1, hidden_size=heads * head_dim, num_attention_heads=heads,
                     attention_backend="te", swa=SwaConfig(window=window), params_dtype=torch.bfloat16,
                     bf16=True)
    return TESlidingWindowCoreAttention(cfg, layer_number=1).to(DEV)


def case_te_correct():
    """The TE core attention, window set per call through the project's interface, against the float64
    reference (bf16: TE's fused attention takes no fp32); and SwaxModel.set_swa_window on a TE-spec model."""
    if _te_missing(["te_correct"]):
        return
    import torch

    from swax_megatron.ops.swa import sliding_window_attention

    _init_megatron()
    b, h, s, d = TE_SHAPE
    default = 2048
    attn = _te_core_attention(h, d, default)
    tol_o, tol_g = SWA_TOL["bf16"]
    g = torch.Generator(device=DEV).manual_seed(3)
    base = [torch.randn(s, b, h, d, generator=g, device=DEV).to(torch.bfloat16) for _ in range(3)]
    do = torch.randn(s, b, h * d, generator=g, device=DEV, dtype=torch.float64)
    results, outs = [], {}
    for w in TE_WINDOWS:
        attn.set_window(w)  # the per-call interface SwaxModel.set_swa_window drives
        expect = default if w is None else w
        xs = [t.clone().requires_grad_() for t in base]
        out = attn(*xs)  # [s, b, h * d]
        gr = torch.autograd.grad((out.double() * do).sum(), xs)
        leaves = [t.double().permute(1, 2, 0, 3).detach().requires_grad_() for t in base]
        ref = sliding_window_attention(*leaves, expect, impl="masked")  # [b, h, s, d]
        ref = ref.permute(2, 0, 1, 3).reshape(s, b, h * d)
        ref_grads = [x.permute(2, 0, 1, 3) for x in torch.autograd.grad((ref * do).sum(), leaves)]
        errs = dict(out=rel(out, ref), **{n: rel(a, r) for n, a, r in zip(("dq", "dk", "dv"), gr, ref_grads)})
        ok = attn.window == expect and all(e <= (tol_o if k == "out" else tol_g) for k, e in errs.items())
        results.append(dict(window=w, module_window=attn.window, errors=errs, passed=ok))
        outs[w] = out.detach()
    w1, w2 = TE_WINDOWS[:2]
    change = rel(outs[w1], outs[w2])  # different windows must give different outputs (10x the tolerance)
    window_reaches_kernel = change > 10 * tol_o
    model = _te_model_windows()
    passed = all(r["passed"] for r in results) and window_reaches_kernel and model["passed"]
    emit(case="te_correct", status="ok", passed=passed, shape=dict(B=b, H=h, S=s, D=d), results=results,
         output_change_between_windows=change, window_reaches_kernel=window_reaches_kernel, model=model,
         limits=dict(out=tol_o, grads=tol_g))
    _teardown()


def _te_model_windows() -> dict:
    """A one-S-layer SwaxModel from the TE spec: set_swa_window must reach every TE core attention and
    change the logits."""
    import torch

    from swax_megatron.config.schema import MLSTMConfig, SwaConfig
    from swax_megatron.models import SwaxConfig, SwaxModel, get_swax_block_spec
    from swax_megatron.models.attention import WindowedAttention

    try:
        seq = 256
        cfg = SwaxConfig(num_layers=1, hidden_size=256, num_attention_heads=4, layer_pattern="S",
                         mlstm=MLSTMConfig(num_heads=2), swa=SwaConfig(window=seq), vocab_size=512,
                         max_sequence_length=seq, params_dtype=torch.bfloat16, bf16=True, attention_backend="te")
        model = SwaxModel(cfg, get_swax_block_spec("te")).to(DEV)
        tokens = torch.randint(0, 512, (1, seq), generator=torch.Generator().manual_seed(0)).to(DEV)
        logits, seen = {}, {}
        for w in (16, None):
            model.set_swa_window(w)
            seen[str(w)] = [m.window for m in model.modules() if isinstance(m, WindowedAttention)]
            with torch.no_grad():
                logits[w] = model(tokens).float()
        change = rel(logits[16], logits[None])
        ok = seen["16"] == [16] and seen["None"] == [seq] and change > 1e-3
        return dict(passed=ok, windows_seen=seen, logits_change=change)
    except Exception as e:  # noqa: BLE001
        return dict(passed=False, error=f"{type(e).__name__}: {str(e)[:300]}")


# ----------------------------------------------------------------------------------------------- training
def _same_weights(model, config) -> str:
    """Redraw every weight matrix (2-D and up) from a generator seeded by its name, at megatron's init std
    (init_method_std; linear_proj / linear_fc2 scaled by 1/sqrt(2 * layers) as megatron's output-layer init):
    every backend, local or TE spec, starts from the same weights whatever order its modules drew in. 1-D
    parameters (norm weights, gate biases) are constants of the config already. Returns a digest of the
    parameter names and shapes (equal digests: the backends' models are comparable)."""
    import hashlib
    import math
    import zlib

    import torch

    digest = hashlib.sha1()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            digest.update(f"{name}{tuple(p.shape)};".encode())
            if p.dim() < 2:
                continue
            std = config.init_method_std
            if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
                std /= math.sqrt(2.0 * config.num_layers)
            g = torch.Generator(device=p.device).manual_seed(zlib.crc32(name.encode()))
            p.copy_(torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32) * std)
    return digest.hexdigest()[:12]


def case_train(backend: str):
    """Three training steps of the real engine (megatron DDP + optimizer) with 4 layers of the SWAX-1.4B shape
    at sequence 16384, bf16, attention backend `backend`; losses and grad norms for the parent to compare with
    the torch backend's, peak memory, step times and MFU (the parallel phase shares the GPU: times indicative)."""
    name = f"train_{backend}"
    if backend == "te" and _te_missing([name]):
        return
    import torch

    from swax_megatron.config.resolve import resolve
    from swax_megatron.models.attention import WindowedAttention
    from swax_megatron.training import flops
    from swax_megatron.training.engine import build_engine, evaluate, train_step

    _init_megatron()
    overrides = TRAIN_OVERRIDES + [
        f"model.attention_backend={backend}", f"model.mlstm.kernel={'triton' if DEV == 'cuda' else 'torch'}",
        f"train.seq_length={TRAIN_SEQ}", "train.micro_batch_size=1", "train.global_batch_size=1",
        f"train.precision={TRAIN_PRECISION}", "slurm.gpus_per_node=1"]
    recipe = resolve(os.path.join(REPO, TRAIN_RECIPE), overrides).recipe
    vocab = recipe.model.vocab_size
    e = build_engine(recipe, vocab, torch.device(DEV))
    digest = _same_weights(e.model, e.config)
    e.optimizer.reload_model_params()  # the optimizer's fp32 main weights from the redrawn ones
    t = torch.randint(0, vocab, (1, TRAIN_SEQ + 1), generator=torch.Generator().manual_seed(0)).to(DEV)
    batches = [{"tokens": t[:, :-1], "labels": t[:, 1:],
                "loss_mask": torch.ones(1, TRAIN_SEQ, device=DEV)}]
    # Forward only at the initial weights, at two windows: the window's effect on the loss (the comparison
    # with the torch backend sees a window that does not reach the kernel only where the tolerance is below it).
    eval_losses = {str(w): evaluate(e, [batches], window=w) for w in sorted(set(TRAIN_WINDOWS))}
    # FlexAttention has no backward on CPU: --smoke runs the flex engine forward only (evaluate above).
    forward_only = backend == "flex" and DEV == "cpu"
    losses, grad_norms, step_ms, windows_seen = [], [], [], []
    for w in ((), TRAIN_WINDOWS)[not forward_only]:
        _sync()
        t0 = time.perf_counter()
        r = train_step(e, batches, window=w, lr=1e-3, weight_decay=0.1)
        losses.append(r.loss)
        grad_norms.append(r.grad_norm)
        _sync()
        step_ms.append((time.perf_counter() - t0) * 1e3)
        windows_seen.append(sorted({m.window for m in e.model.modules()
                                    if isinstance(m, WindowedAttention) and m.sliding}))
    dims = flops.ModelDims.from_config(e.config)
    per_token = flops.train_flops_per_token(dims, TRAIN_SEQ, TRAIN_WINDOWS[-1])
    gpu = torch.cuda.get_device_name(0) if DEV == "cuda" else None
    mfu = flops.mfu(TRAIN_SEQ / (step_ms[-1] / 1e3), per_token, 1, gpu, TRAIN_PRECISION) if step_ms else None
    emit(case=name, status="ok", attention_backend=backend, eval_losses=eval_losses, losses=losses,
         grad_norms=grad_norms,
         windows=list(TRAIN_WINDOWS[:len(losses)]), windows_seen=windows_seen, step_ms=step_ms, peak_gb=_peak_gb(),
         mfu_last_step=mfu, params=sum(p.numel() for p in e.model.parameters()), weights_digest=digest,
         forward_only=forward_only,
         shape=dict(layers=e.config.layer_pattern, hidden=e.config.hidden_size, seq=TRAIN_SEQ,
                    dtype=TRAIN_PRECISION))
    _teardown()


def compare_training(recs: list[dict]) -> list[dict]:
    """One `train_cmp_<backend>` record per non-torch backend that trained: losses (forward only at each
    window, then every step) within TRAIN_LOSS_TOL of the torch backend's (absolute), grad norms within
    TRAIN_GN_TOL (relative), same window in every S layer at every step."""
    by = {r["case"]: r for r in recs if r.get("status") == "ok" and r.get("case", "").startswith("train_")}
    ref = by.get("train_torch")
    out = []
    for name, r in by.items():
        if name == "train_torch":
            continue
        case = "train_cmp_" + r["attention_backend"]
        if ref is None:
            out.append(dict(case=case, status="error", reason="no train_torch result to compare with"))
            continue
        if r["weights_digest"] != ref["weights_digest"]:
            out.append(dict(case=case, status="error", reason="parameter names/shapes differ from the torch "
                            "backend's: the weights are not the same, losses not comparable"))
            continue
        n = len(r["losses"])
        dl = [abs(r["eval_losses"][w] - ref["eval_losses"][w]) for w in ref["eval_losses"]]
        dl += [abs(a - b) for a, b in zip(r["losses"], ref["losses"][:n])]
        dg = [abs(a - b) / abs(b) for a, b in zip(r["grad_norms"], ref["grad_norms"])]
        ok = (all(x <= TRAIN_LOSS_TOL for x in dl) and all(x <= TRAIN_GN_TOL for x in dg)
              and r["windows_seen"] == ref["windows_seen"][:n])
        ev = list(ref["eval_losses"].values())
        window_effect = max(ev) - min(ev)  # the torch backend's loss change between the windows, same weights
        out.append(dict(case=case, status="ok", passed=ok, loss_diffs=dl, grad_norm_rel_diffs=dg,
                        window_effect=window_effect, sees_window=window_effect > TRAIN_LOSS_TOL,
                        limits=dict(loss=TRAIN_LOSS_TOL, grad_norm=TRAIN_GN_TOL), steps_compared=n))
    return out


# ------------------------------------------------------------------------------------------------ timings
def _bench(fn, grad_to_none=None):
    import torch
    import triton.testing

    fn()
    if SMOKE:  # do_bench needs CUDA events; in a smoke run only the plumbing matters
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median"))


def _time_mlstm(name, fwd, extra=None):
    import torch

    x = _mlstm_inputs(torch, B, MH, S, DQK, DHV, torch.bfloat16)
    dh = torch.randn(B, MH, S, DHV, device=DEV, dtype=torch.bfloat16)
    with torch.no_grad():
        t_f = _bench(lambda: fwd(*x))
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def fb():
        out = fwd(*x)
        out.backward(dh)

    t_fb = _bench(fb, grad_to_none=x)
    emit(case=name, status="ok", fwd_ms=t_f, fwdbwd_ms=t_fb, peak_gb=_peak_gb(),
         shape=dict(B=B, H=MH, S=S, DK=DQK, DV=DHV, dtype="bf16"), **(extra or {}))


def case_own(chunk: int = 128, **tiling):
    from swax_megatron.ops.mlstm.triton import mlstm_chunkwise_triton

    _time_mlstm(f"own_L{chunk}" + "".join(f"_{k}{v}" for k, v in tiling.items()),
                lambda *x: mlstm_chunkwise_triton(*x, chunk_size=chunk, **tiling)[0],
                dict(chunk=chunk, tiling=tiling))


def case_tfla(kind: str):
    try:
        from mlstm_kernels.torch import get_mlstm_kernel
    except Exception as e:  # noqa: BLE001
        emit(case=f"tfla_{kind}", status="skipped", reason=f"mlstm_kernels does not import ({type(e).__name__}: {e})")
        return
    import torch

    name = {"xl": "chunkwise--triton_xl_chunk", "limit": "chunkwise--triton_limit_chunk"}[kind]
    chunk = 128 if kind == "xl" else 64
    kern = get_mlstm_kernel(name)
    _time_mlstm(f"tfla_{kind}", lambda *x: kern(*x, chunk_size=chunk, autocast_kernel_dtype=torch.bfloat16),
                dict(kernel=name, chunk=chunk, DISABLE_LLVM_OPT=os.environ.get("DISABLE_LLVM_OPT")))


def _attn_inputs(torch, layout="bhsd"):
    shape = (B, AH, S, AD) if layout == "bhsd" else (S, B, AH, AD)
    q, k, v = (torch.randn(*shape, device=DEV, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do_shape = shape if layout == "bhsd" else (S, B, AH * AD)
    return q, k, v, torch.randn(*do_shape, device=DEV, dtype=torch.bfloat16)


def _time_attn(name, fwd, q, k, v, do, extra, backward=True):
    import torch

    with torch.no_grad():
        t_f = _bench(lambda: fwd(q, k, v))

    def fb():
        fwd(q, k, v).backward(do)

    t_fb = _bench(fb, grad_to_none=[q, k, v]) if backward else float("nan")
    emit(case=name, status="ok", fwd_ms=t_f, fwdbwd_ms=t_fb, shape=dict(B=B, H=AH, S=S, D=AD, dtype="bf16"),
         **extra)


def case_sdpa():
    import torch
    import torch.nn.functional as F

    q, k, v, do = _attn_inputs(torch)
    _time_attn("sdpa_causal", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v, do,
               {})


def _time_windows(prefix, make_fwd, layout="bhsd", backward=True, extra=None):
    import torch

    q, k, v, do = _attn_inputs(torch, layout)
    for w in WINDOWS:
        try:
            _time_attn(f"{prefix}_w{w}", make_fwd(w), q, k, v, do, dict(window=w, **(extra or {})), backward)
        except Exception as e:  # noqa: BLE001
            emit(case=f"{prefix}_w{w}", status="error", reason=f"{type(e).__name__}: {str(e)[:300]}")


def case_flex():
    # Our adapter (ops/swa/flex.py): compiled flex_attention, one cached block mask per window. On CPU
    # (--smoke) forward only: torch has no CPU backward for FlexAttention.
    from swax_megatron.ops.swa.flex import flex_sliding_window_attention

    _time_windows("flex", lambda w: (lambda q, k, v: flex_sliding_window_attention(q, k, v, w)),
                  backward=DEV == "cuda")


def case_swa_torch():
    # The torch SWA path (ops.swa: chunked O(S x window) with its own backward, or SDPA with a band mask).
    from swax_megatron.ops.swa import choose_impl, sliding_window_attention

    _time_windows("swa_torch", lambda w: (lambda q, k, v: sliding_window_attention(q, k, v, w)),
                  extra=dict(impl_by_window={str(w): choose_impl(S, w) for w in WINDOWS}))


def case_te():
    """TE fused attention through the project's TE core attention; the window set per call (set_window)."""
    if _te_missing([f"te_w{w}" for w in WINDOWS]):
        return
    import transformer_engine

    _init_megatron()
    attn = _te_core_attention(AH, AD, WINDOWS[-1])

    def make(w):
        attn.set_window(w)
        return lambda q, k, v: attn(q, k, v)

    _time_windows("te", make, layout="sbhd", extra=dict(te_version=getattr(transformer_engine, "__version__", None)))
    _teardown()


def case_layer_pair():
    """One SWAX-1.4B layer pair (X then S, hidden 2048, each with its SwiGLU MLP) through the real
    megatron model code, bf16, fwd+bwd at B=1 x S=16384 (the paper's sequence length), per window;
    peak memory and MFU (analytic FLOPs of swax_megatron.training.flops, no output layer)."""
    import torch

    from swax_megatron.config.schema import MLSTMConfig, SwaConfig
    from swax_megatron.models import SwaxConfig, SwaxModel, get_swax_block_spec
    from swax_megatron.models.attention import resolve_attention_backend
    from swax_megatron.training import flops

    seq = PAIR_SEQ
    hidden, heads, mheads = PAIR_DIMS
    _init_megatron()
    backend = resolve_attention_backend("auto")
    mlstm = MLSTMConfig(num_heads=mheads, kernel="triton" if DEV == "cuda" else "torch", chunk_size=64)
    cfg = SwaxConfig(num_layers=2, hidden_size=hidden, num_attention_heads=heads, layer_pattern="XS",
                     mlstm=mlstm, swa=SwaConfig(window=2048), vocab_size=50304,
                     max_sequence_length=seq, params_dtype=torch.bfloat16, bf16=True,
                     attention_backend=backend)
    model = SwaxModel(cfg, get_swax_block_spec("te" if backend == "te" else "local"),
                      pre_process=False, post_process=False).to(DEV)
    x = torch.randn(seq, 1, hidden, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)
    rot = model.rotary_pos_emb(seq) if getattr(model, "rotary_pos_emb", None) is not None else None
    dims = flops.ModelDims.from_config(cfg)
    gpu = torch.cuda.get_device_name(0) if DEV == "cuda" else None
    for w in WINDOWS:
        model.set_swa_window(w)

        def fwd():
            model.decoder.set_input_tensor(x)
            return model.decoder(None, rotary_pos_emb=rot)

        with torch.no_grad():
            t_f = _bench(fwd)
        t_fb = _bench(lambda: fwd().backward(dy), grad_to_none=[x, *model.parameters()])
        comp = flops.forward_flops_per_token(dims, seq, w)
        per_token = flops.TRAIN_FACTOR * (comp["S"] + comp["X"] + comp["mlp"])
        emit(case=f"pair_w{w}", status="ok", fwd_ms=t_f, fwdbwd_ms=t_fb, window=w, attention_backend=backend,
             peak_gb=_peak_gb(), mfu=flops.mfu(seq / (t_fb / 1e3), per_token, 1, gpu, "bf16"),
             shape=dict(B=1, S=seq, hidden=hidden, layers="XS", dtype="bf16"))
    _teardown()


# name -> (function, kwargs, extra environment, what it checks, timeout s, group). Groups "correct" and "train"
# run first, in parallel; "time" cases then one at a time, in this order (most important first).
CASES = {
    "correct_bf16": (case_correct, dict(dtype_name="bf16"), {}, "Triton mLSTM bf16 vs float64 stopgrad", 200,
                     "correct"),
    "train_torch": (case_train, dict(backend="torch"), {}, "SWAX-1.4B x 4 layers, S=16384, bf16: torch SWA", 240,
                    "train"),
    "train_flex": (case_train, dict(backend="flex"), {}, "the same, FlexAttention", 240, "train"),
    "correct_fp32": (case_correct, dict(dtype_name="fp32"), {}, "Triton mLSTM fp32 (tf32x3) vs float64", 200,
                     "correct"),
    "correct_swa": (case_correct_swa, {}, {}, "Flex and torch SWA fwd+bwd vs float64, bf16 and fp32", 200,
                    "correct"),
    "te_correct": (case_te_correct, {}, {}, "TE core attention, per-call window, vs float64", 150, "correct"),
    "train_te": (case_train, dict(backend="te"), {}, "the same, TE spec", 240, "train"),
    "correct_fp16": (case_correct, dict(dtype_name="fp16"), {}, "Triton mLSTM fp16 vs float64", 150, "correct"),
    "own": (case_own, dict(chunk=128), {}, "own mLSTM, chunk 128", 60, "time"),
    "tfla_xl": (case_tfla, dict(kind="xl"), {"DISABLE_LLVM_OPT": "1"}, "mlstm_kernels TFLA xl_chunk, chunk 128",
                120, "time"),
    "own_L64": (case_own, dict(chunk=64), {}, "own mLSTM, chunk 64 (the recipe default)", 60, "time"),
    "flex": (case_flex, {}, {}, "FlexAttention sliding window (32 x 128)", 150, "time"),
    "swa_torch": (case_swa_torch, {}, {}, "torch SWA path (ops.swa) sliding window (32 x 128)", 90, "time"),
    "te": (case_te, {}, {}, "TE core attention, window per call (32 x 128)", 90, "time"),
    "sdpa": (case_sdpa, {}, {}, "SDPA causal (32 x 128)", 45, "time"),
    "pair": (case_layer_pair, {}, {}, "SWAX-1.4B layer pair (X + S, hidden 2048), S=16384, per window", 150,
             "time"),
    "tfla_limit": (case_tfla, dict(kind="limit"), {}, "mlstm_kernels limit_chunk, chunk 64", 90, "time"),
    "own_L256": (case_own, dict(chunk=256), {}, "own mLSTM, chunk 256", 60, "time"),
}
SWEEP = {
    "own_w4": (case_own, dict(chunk=128, num_warps=4), {}, "own mLSTM, chunk 128, 4 warps", 60, "time"),
    "own_bv64": (case_own, dict(chunk=128, block_v=64), {}, "own mLSTM, chunk 128, V tiles of 64", 60, "time"),
    "own_bl32": (case_own, dict(chunk=128, block_l=32), {}, "own mLSTM, chunk 128, inner blocks of 32", 60, "time"),
}
ALL_CASES = {**CASES, **SWEEP}


# -------------------------------------------------------------------------------------------- parent
def _records(out: str) -> list[dict]:
    return [json.loads(line[len(MARK):]) for line in (out or "").splitlines() if line.startswith(MARK)]


def run_case(name: str, timeout: float) -> list[dict]:
    """Run one case in a subprocess of its own process session; past `timeout` the whole session (the case
    and any compiler workers it started) is killed and the records printed so far are kept."""
    env_extra = ALL_CASES[name][2]
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.time()
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--case", name], env=env, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    timed_out = False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = p.communicate()
    recs = _records(out)
    wall = round(time.time() - t0, 1)
    for r in recs:
        r.setdefault("wall_s", wall)
    tail = " | ".join([ln for ln in (err or "").strip().splitlines() if ln.strip()][-3:])[-400:]
    if timed_out:
        recs.append(dict(case=name, status="error", reason=f"timeout after {timeout:.0f} s: {tail}", wall_s=wall))
    elif (p.returncode != 0 or not recs) and not any(r.get("status") == "error" for r in recs):
        recs.append(dict(case=name, status="error", reason=f"exit code {p.returncode}: {tail}", wall_s=wall))
    return recs


def _verdict(r: dict) -> str:
    return "PASS" if r.get("passed") else "FAIL"


def _worst(errs: dict) -> str:
    k = max(errs, key=errs.get)
    return f"worst {k}={errs[k]:.1e}"


def summary(recs: list[dict], smoke: bool = False) -> str:
    ok = {r["case"]: r for r in recs if r.get("status") == "ok"}
    tfla = ok.get("tfla_xl", {}).get("fwdbwd_ms")
    ref_ms, ref_label = (tfla, "TFLA xl (this run)") if tfla else (TFLA_ANCHOR_MS, "TFLA anchor 18.6 ms (H100)")
    lines = ["", "correctness, training; skipped and failed cases", "-" * 100]
    timing = []
    for r in recs:
        case, status = r.get("case", "?"), r.get("status", "?")
        if status != "ok":
            lines.append(f"{case:<18} {status}: {r.get('reason', '')}")
        elif case in ("correct_bf16", "correct_fp32", "correct_fp16"):
            for res in r["results"]:
                sh = res["shape"]
                lines.append(f"{case:<18} {_verdict(res)} {sh['DK']}x{sh['DV']} L{sh['chunk']} S{sh['S']}"
                             f"{' +state' if sh['initial_state'] else ''}: {_worst(res['errors'])}")
        elif case == "correct_swa":
            for kern in ("flex", "torch"):
                for dt in ("bf16", "fp32"):
                    rows = [x for x in r["results"] if x["kernel"] == kern and x["dtype"] == dt]
                    errs = {f"{k}@w{x['window']}": v for x in rows for k, v in x["errors"].items()}
                    lines.append(f"{case:<18} {'PASS' if all(x['passed'] for x in rows) else 'FAIL'} {kern} {dt}, "
                                 f"windows {[x['window'] for x in rows]}: {_worst(errs)}"
                                 + ("" if all(x["backward"] for x in rows) else " (forward only on CPU)"))
        elif case == "te_correct":
            for res in r["results"]:
                lines.append(f"{case:<18} {_verdict(res)} window {res['window']} (module {res['module_window']}): "
                             f"{_worst(res['errors'])}")
            lines.append(f"{case:<18} {'PASS' if r['window_reaches_kernel'] else 'FAIL'} a changed window "
                         f"changes the output by {r['output_change_between_windows']:.2e}; model "
                         f"set_swa_window: {'PASS' if r['model'].get('passed') else 'FAIL'} {r['model']}")
        elif case.startswith("train_cmp_"):
            lines.append(f"{case:<18} {_verdict(r)} vs train_torch: |d loss| {[f'{x:.1e}' for x in r['loss_diffs']]}"
                         f" (<= {TRAIN_LOSS_TOL}), grad norm rel {[f'{x:.1e}' for x in r['grad_norm_rel_diffs']]}"
                         f" (<= {TRAIN_GN_TOL}); the window moves the loss by {r['window_effect']:.1e}"
                         + ("" if r["sees_window"] else ": below the tolerance, this comparison cannot see the "
                            "window (correct_swa / te_correct do)"))
        elif case.startswith("train_"):
            lines.append(f"{case:<18} eval {r['eval_losses']} steps: losses {[round(x, 4) for x in r['losses']]} grad norms "
                         f"{[round(x, 4) for x in r['grad_norms']]} windows {r['windows']}, peak "
                         f"{r['peak_gb']:.1f} GB, steps {[round(x) for x in r['step_ms']]} ms"
                         + (" (forward only)" if r.get("forward_only") else ""))
        elif "fwdbwd_ms" in r:
            timing.append(r)
    lines += ["", f"{'timings (ms)':<18} {'fwd':>9} {'fwd+bwd':>9} {'ratio':>7}  against / note", "-" * 100]
    for r in timing:
        case, note, ratio = r["case"], "", float("nan")
        if case.startswith(("own_", "tfla_")):
            ratio, note = r["fwdbwd_ms"] / ref_ms, ref_label
        elif "window" in r and not case.startswith(("flex_", "pair_")) and f"flex_w{r['window']}" in ok:
            ratio, note = r["fwdbwd_ms"] / ok[f"flex_w{r['window']}"]["fwdbwd_ms"], f"flex_w{r['window']}"
        if r.get("peak_gb") == r.get("peak_gb") and r.get("peak_gb") is not None:
            note += f" peak {r['peak_gb']:.1f} GB"
        if r.get("mfu") is not None:
            note += f" MFU {r['mfu']:.1%}"
        lines.append(f"{case:<18} {r['fwd_ms']:>9.2f} {r['fwdbwd_ms']:>9.2f} {ratio:>7.2f}  {note}")
    lines.append("")
    meaningless = " (smoke run on CPU: meaningless)" if smoke else ""
    for own in ("own_L128", "own_L64"):
        if own in ok:
            x = ok[own]["fwdbwd_ms"] / ref_ms
            lines.append(f"target {own} fwd+bwd <= 0.9 x {ref_label}: {ok[own]['fwdbwd_ms']:.2f} ms = {x:.2f}x -> "
                         f"{'MET' if x <= 0.9 else 'NOT MET'}{meaningless}")
    # the windows from the records: the parent of a --smoke run holds the GPU WINDOWS, its cases the tiny ones
    windows = sorted({r["window"] for r in timing if r["case"].startswith("flex_w")})
    for kind in ("swa_torch", "te"):
        pairs = [(w, ok.get(f"{kind}_w{w}"), ok.get(f"flex_w{w}")) for w in windows]
        pairs = [(w, a, f) for w, a, f in pairs if a and f]
        # fwd+bwd; forward only where Flex has no backward (CPU, --smoke)
        key = "fwdbwd_ms" if all(f["fwdbwd_ms"] > 0 for _, _, f in pairs) else "fwd_ms"
        pairs = [(w, a[key] / f[key]) for w, a, f in pairs]
        if pairs:
            met = all(x <= 1.0 for _, x in pairs)
            lines.append(f"target {kind} {'fwd+bwd' if key == 'fwdbwd_ms' else 'fwd'} <= Flex at every window: "
                         + ", ".join(f"w{w} {x:.2f}x" for w, x in pairs)
                         + f" -> {'MET' if met else 'NOT MET'}{meaningless}")
    return "\n".join(lines)


def failures(recs: list[dict], names: list[str]) -> list[str]:
    """Correctness and training cases (and comparisons) that failed or errored."""
    checked = [n for n in names if ALL_CASES[n][5] in ("correct", "train")]
    bad = []
    for r in recs:
        case = r.get("case", "")
        base = next((n for n in checked if case == n), None)
        if base is None and not case.startswith("train_cmp_"):
            continue
        if r.get("status") == "error" or (r.get("status") == "ok" and r.get("passed") is False):
            bad.append(case)
    return sorted(set(bad))


def env_info() -> dict:
    import platform

    import torch

    info = dict(date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), host=platform.node(), python=sys.version.split()[0],
                torch=torch.__version__, cuda=torch.version.cuda)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = "sm_%d%d" % torch.cuda.get_device_capability(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception as e:  # noqa: BLE001
            info["driver"] = f"unknown ({type(e).__name__})"
    for mod in ("triton", "megatron.core", "mlstm_kernels", "transformer_engine", "flash_attn"):
        try:
            m = __import__(mod, fromlist=["_"])
            info[mod] = getattr(m, "__version__", "installed")
        except Exception as e:  # noqa: BLE001
            info[mod] = f"missing ({type(e).__name__})"
    return info


# ------------------------------------------------------------------------------------------------- aot
# (B, H, S, DK, DV, chunk, initial state and state gradients): the paper heads with a state carried in and out,
# the recipe default as training runs it (no initial state, loss on h only: the HAS_INIT / HAS_DCN = False
# variants), and ragged heads.
AOT_SHAPES = [(1, 2, 512, DQK, DHV, 128, True), (1, 2, 512, DQK, DHV, 64, False), (2, 2, 300, 48, 80, 64, True)]
# Shared memory one block may use (opt-in maximum, CUDA programming guide, compute capabilities table):
# sm_90 227 KB, sm_80 163 KB. Over it, the launch fails (triton raises OutOfResources); compiling does not.
SMEM_LIMIT = {90: 227 * 1024, 80: 163 * 1024}


def _ptxas_usage(ptx: str, arch: int) -> dict:
    """Registers, stack frame and spill bytes of one kernel, from `ptxas -v` on its PTX with the flags
    triton's own make_cubin uses (the cubin's resource table has no spill counts)."""
    import re
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        p = subprocess.run([get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                            f"--gpu-name={sm_arch_from_capability(arch)}",
                            src, "-o", os.path.join(d, "k.cubin")], capture_output=True, text=True)
    log = p.stderr + p.stdout
    if p.returncode != 0:
        raise RuntimeError(f"ptxas failed ({p.returncode}): {log[-300:]}")
    grab = lambda pat: int(m.group(1)) if (m := re.search(pat, log)) else -1  # noqa: E731
    return dict(registers=grab(r"Used (\d+) registers"), stack=grab(r"(\d+) bytes stack frame"),
                spill_stores=grab(r"(\d+) bytes spill stores"), spill_loads=grab(r"(\d+) bytes spill loads"))


def aot_records(arches=(90, 80), dtypes=("bfloat16", "float16", "float32"), shapes=AOT_SHAPES, tiling=None):
    """Without a GPU: drive the real wrapper (forward and backward, with and without initial and final state
    gradients, full and ragged tiles) through a stand-in CUDA driver that compiles each kernel for sm_XX exactly as its first
    launch would, but launches nothing. Returns (one record per compiled kernel, failed configurations)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    import swax_megatron.ops.mlstm.triton.chunk as chunk

    arch_now = [arches[0]]

    class CompileOnlyDriver:  # what JITFunction.run asks of the active driver
        def get_current_device(self):  # one "device" per arch: JITFunction caches the target per device
            return arch_now[0]

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", arch_now[0], 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def is_active(self):
            return True

    seen = {}
    cfg = [""]
    orig_run, orig_check = JITFunction.run, chunk._check
    orig_driver = driver._active  # None on a machine without a GPU: no default driver can be made there

    def compile_only(self, *a, grid, warmup, **kw):
        k = orig_run(self, *a, grid=grid, warmup=True, **kw)
        seen.setdefault((arch_now[0], self.fn.__name__, cfg[0]), k)
        return k

    def check_as_if_gpu(*a, **kw):  # the CPU stand-in tensors pass the device guard
        chunk.INTERPRET = True
        try:
            return orig_check(*a, **kw)
        finally:
            chunk.INTERPRET = False

    driver.set_active(CompileOnlyDriver())
    JITFunction.run = compile_only
    chunk._check = check_as_if_gpu
    failed = []
    try:
        for arch in arches:
            arch_now[0] = arch
            for dtype_name in dtypes:
                dtype = getattr(torch, dtype_name)
                for (b, h, s, dk, dv, cs, state) in shapes:
                    cfg[0] = f"{dtype_name} {dk}x{dv} L{cs} S{s}" + (" state" if state else "")
                    x = [torch.randn(b, h, s, dk), torch.randn(b, h, s, dk), torch.randn(b, h, s, dv),
                         torch.randn(b, h, s), torch.randn(b, h, s)]
                    x = [t.to(dtype).requires_grad_() for t in x]
                    st = None
                    if state:
                        st = tuple(t.requires_grad_() for t in (torch.zeros(b, h, dk, dv), torch.zeros(b, h, dk),
                                                               torch.zeros(b, h)))
                    try:
                        hh, (C, n, _) = chunk.mlstm_chunkwise_triton(*x, chunk_size=cs, initial_state=st,
                                                                     **(tiling or {}))
                        loss = hh.float().sum() + (C.sum() + n.sum() if state else 0.0)
                        loss.backward()
                    except Exception as e:  # noqa: BLE001
                        failed.append(f"sm_{arch} {cfg[0]}: FAILED {type(e).__name__}: {str(e)[:500]}")
    finally:
        JITFunction.run, chunk._check = orig_run, orig_check
        driver._active = orig_driver
    records = []
    for (arch, name, c), k in seen.items():
        records.append(dict(arch=arch, config=c, kernel=name, warps=k.metadata.num_warps,
                            shared=k.metadata.shared, **_ptxas_usage(k.asm["ptx"], arch)))
    return records, failed



def aot(arches=(90, 80), tiling=None, dtypes=("bfloat16", "float16", "float32")) -> int:
    """Compile every kernel for sm_90 / sm_80 without a GPU (aot_records) and print ptxas registers, stack
    frame, spills and shared memory. Exit status 1 when a configuration fails to compile, any kernel spills
    registers (spill stores or loads > 0: local-memory traffic inside the kernels' inner loops; the tiling
    heuristics, ops/mlstm/triton/chunk.py pick_blocks, are chosen so that none does), or a kernel needs more
    shared memory per block than its arch has (SMEM_LIMIT: such a launch fails on the GPU). One line per
    offending kernel: "aot: SPILL ..." / "aot: SMEM ...", naming arch, dtype, shape and kernel."""
    records, failed = aot_records(arches, dtypes, tiling=tiling)
    spills, smem = [], []
    for r in records:
        line = (f"sm_{r['arch']} {r['config']:<32} {r['kernel']:<18} warps={r['warps']} registers={r['registers']} "
                f"stack={r['stack']} B spill stores={r['spill_stores']} B loads={r['spill_loads']} B "
                f"shared={r['shared']} B")
        print("  " + line)
        if r["spill_stores"] != 0 or r["spill_loads"] != 0:
            spills.append(line)
        limit = SMEM_LIMIT.get(r["arch"])
        if limit is not None and r["shared"] > limit:
            smem.append(f"sm_{r['arch']} {r['config']} {r['kernel']}: shared={r['shared']} B > {limit} B "
                        f"({limit // 1024} KB per block on sm_{r['arch']})")
    for line in failed:
        print("  " + line)
    for line in spills:
        print(f"aot: SPILL {line}")
    for line in smem:
        print(f"aot: SMEM {line}")
    worst, most_shared = {}, {}
    for r in records:
        key = (r["arch"], r["config"].split()[0])
        worst[key] = max(worst.get(key, 0), r["spill_stores"])
        most_shared[r["arch"]] = max(most_shared.get(r["arch"], 0), r["shared"])
    print("aot: largest spill stores per arch and dtype: "
          + ", ".join(f"sm_{a} {d} {v} B" for (a, d), v in sorted(worst.items())))
    print("aot: largest shared memory per arch: "
          + ", ".join(f"sm_{a} {v} B of {SMEM_LIMIT.get(a, '?')} B" for a, v in sorted(most_shared.items())))
    print(f"aot: {len(records)} kernels compiled, {len(failed)} configurations failed, {len(spills)} kernels spill, "
          f"{len(smem)} kernels over the shared-memory limit")
    return 1 if failed or spills or smem else 0


def run_all(names: list[str], budget: float, case_timeout: float | None, jobs: int) -> list[dict]:
    """Phase 1: the correctness and training cases, `jobs` at a time; phase 2: the timings, one at a time.
    Every case gets its own timeout (CASES, or --case-timeout), cut to what is left of the budget."""
    start = time.time()
    results: dict[str, list[dict]] = {}
    lock = threading.Lock()

    def say(text: str) -> None:
        with lock:  # whole lines from the worker threads
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def one(name: str) -> list[dict]:
        left = budget - (time.time() - start)
        if left < 20:
            recs = [dict(case=name, status="skipped", reason=f"time budget of {budget:.0f} s used up")]
        else:
            say(f"-- {name}: {ALL_CASES[name][3]} (timeout {min(case_timeout or ALL_CASES[name][4], left):.0f} s)")
            recs = run_case(name, min(case_timeout or ALL_CASES[name][4], left))
        say("\n".join(MARK + json.dumps(r) for r in recs))
        return recs

    parallel = [n for n in names if ALL_CASES[n][5] != "time"]
    if parallel:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for name, recs in zip(parallel, pool.map(one, parallel)):
                results[name] = recs
    for name in names:
        if name not in results:
            results[name] = one(name)
    recs = [r for n in names for r in results[n]]
    cmp = compare_training(recs)
    for r in cmp:
        print(MARK + json.dumps(r), flush=True)
    return recs + cmp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="cases, in run order: " + ", ".join(CASES) + "; with --sweep also "
                                        + ", ".join(SWEEP))
    ap.add_argument("--only", help="comma-separated case names (see below)")
    ap.add_argument("--sweep", action="store_true", help="also time a few other tilings of the own kernel")
    ap.add_argument("--budget", type=float, default=450.0, help="wall-clock seconds for all cases (default 450)")
    ap.add_argument("--case-timeout", type=float, default=None,
                    help="seconds per case subprocess (default: each case's own, 45-240 s)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="correctness/training cases run at once (default 6 on a GPU, 2 with --smoke)")
    ap.add_argument("--json-out", help="also write every JSON record (and the environment) to this file")
    ap.add_argument("--aot", action="store_true", help="compile-only check for sm_90 and sm_80, no GPU needed; "
                    "exit status 1 when a kernel spills registers or exceeds the arch's shared memory")
    ap.add_argument("--aot-tiling", help="with --aot: JSON tiling overrides of mlstm_chunkwise_triton, e.g. "
                    "'{\"block_l\": 32, \"num_warps\": 4}' (to try tilings before changing pick_blocks)")
    ap.add_argument("--aot-dtypes", default="bfloat16,float16,float32", help="with --aot: comma-separated dtypes")
    ap.add_argument("--smoke", action="store_true", help="test this script on CPU: tiny shapes under "
                    "TRITON_INTERPRET=1 (slow interpreter, meaningless timings)")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = ap.parse_args(argv)

    if args.smoke and not args.case:
        os.environ.update(GPU_CHECK_SMOKE="1", TRITON_INTERPRET="1")
    elif os.environ.get("TRITON_INTERPRET") == "1" and not SMOKE:
        print("gpu_check: TRITON_INTERPRET=1 is set; unset it (this script runs the kernels on the GPU)",
              file=sys.stderr)
        return 2
    if args.aot:
        return aot(tiling=json.loads(args.aot_tiling) if args.aot_tiling else None,
                   dtypes=tuple(args.aot_dtypes.split(",")))

    if args.case:
        import warnings

        warnings.filterwarnings("ignore")  # megatron's "TE / Apex not installed" and the like: not findings
        fn, kw = ALL_CASES[args.case][:2]
        try:
            fn(**kw)
        except Exception as e:  # noqa: BLE001
            emit(case=args.case, status="error", reason=f"{type(e).__name__}: {str(e)[:400]}",
                 traceback=traceback.format_exc()[-1500:])
            return 1
        return 0

    names = list(CASES) + (list(SWEEP) if args.sweep else [])
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_CASES]
    if unknown:
        print(f"gpu_check: unknown case(s) {unknown}; known: {list(ALL_CASES)}", file=sys.stderr)
        return 2

    import warnings

    import torch

    warnings.filterwarnings("ignore")  # megatron's import-time "TE / Apex not installed" (env_info imports it)
    if not torch.cuda.is_available() and not args.smoke:
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False). "
              "This check needs an NVIDIA GPU (H100/H200); `--aot` compiles the kernels for sm_90 without one.",
              file=sys.stderr)
        return 2
    info = env_info()
    print("gpu_check environment: " + json.dumps(info), flush=True)
    start = time.time()
    jobs = args.jobs or (2 if args.smoke else 6)
    recs = run_all(names, args.budget, args.case_timeout, jobs)
    print(summary(recs, smoke=args.smoke))
    bad = failures(recs, names)
    print(f"\ntotal {time.time() - start:.0f} s on {info.get('gpu', 'CPU (smoke)')}; torch {info['torch']}, "
          f"triton {info['triton']}; correctness/training: " + (f"FAILED {bad}" if bad else "all passed or skipped"))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(dict(environment=info, records=recs, failed=bad), f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
