#!/usr/bin/env python
"""One prepared GPU check for the Triton mLSTM kernels and the attention baselines (H100 / H200).

    python bench/gpu_check.py                 # everything, within --budget seconds (default 285)
    python bench/gpu_check.py --only correct_bf16,own,tfla_xl
    python bench/gpu_check.py --aot           # no GPU needed: drive the real wrapper through a compile-only
                                              # driver for sm_90 / sm_80; ptxas registers and spills; exit
                                              # status 1 (and an "aot: SPILL" line per kernel) on any spill
    python bench/gpu_check.py --smoke         # no GPU needed: this script's own code paths on CPU under
                                              # TRITON_INTERPRET=1 with tiny shapes (timings meaningless)

Each case runs in its own subprocess (a compiler abort kills only that case) and prints one JSON line;
the parent collects them and prints a summary table, with fwd+bwd ratios against mlstm_kernels' TFLA
`chunkwise--triton_xl_chunk` measured in the same run (target for our kernel: <= 0.9x; research anchor on
an H100: 18.6 ms). Missing optional packages (mlstm_kernels, transformer_engine) give "skipped: reason" rows.

Correctness: bf16 against the float64 stop-gradient step loop (`mlstm_recurrent(..., grad="stopgrad")`)
on the same bf16-rounded inputs: h and final states within 1e-2, gradients within 3e-2 (max relative error
max|a-b| / max|b|). fp32 (tf32x3 dots) and fp16 rows are reported against 1e-4 / 2e-2.
Timing: triton.testing.do_bench medians (ms) at the anchor shapes: bf16, B=8, S=8192, 65,536 tokens;
mLSTM 8 heads x (qk 256, v 512); attention 32 heads x 128.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

MARK = "@@GPU_CHECK@@ "
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFLA_ANCHOR_MS = 18.6  # mlstm_kernels xl_chunk (TFLA) fwd+bwd, bf16, 8 heads 256/512, S=8192 x B=8, chunk 128, measured
# with do_bench on one H100 80GB (torch 2.11.0+cu130, triton 3.6.0, mlstm_kernels 2.0.6)
B, S = 8, 8192
MH, DQK, DHV = 8, 256, 512  # mLSTM heads (xLSTM-7B)
AH, AD = 32, 128  # attention heads
WINDOWS = (128, 512, 2048)
CORRECT_SHAPES = [(1, 2, 512, DQK, DHV, 128), (2, 2, 300, 64, 128, 64)]  # (B, H, S, DK, DV, chunk)
DEV = "cuda"
# --smoke: the same code paths on CPU under TRITON_INTERPRET=1 with tiny shapes, to test this script itself.
SMOKE = os.environ.get("GPU_CHECK_SMOKE") == "1"
if SMOKE:
    B, S, MH, DQK, DHV, AH, AD, WINDOWS, DEV = 1, 128, 1, 32, 64, 2, 16, (16, 32, 64), "cpu"
    CORRECT_SHAPES = [(1, 1, 96, 32, 64, 64), (1, 2, 50, 16, 32, 16)]


def emit(**rec):
    print(MARK + json.dumps(rec), flush=True)


# ----------------------------------------------------------------------------------------------- cases
def _mlstm_inputs(torch, b, h, s, dk, dv, dtype, seed=0, requires_grad=True):
    g = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, device=DEV, dtype=torch.float32)  # noqa: E731
    x = [r(b, h, s, dk), r(b, h, s, dk), r(b, h, s, dv), r(b, h, s), 3.0 + 2.0 * r(b, h, s)]
    return [t.to(dtype).requires_grad_(requires_grad) for t in x]


def case_correct(dtype_name: str):
    import torch

    from swax_megatron.ops.mlstm import mlstm_recurrent
    from swax_megatron.ops.mlstm.triton import mlstm_chunkwise_triton

    dtype = dict(bf16=torch.bfloat16, fp16=torch.float16, fp32=torch.float32)[dtype_name]
    tol_h, tol_g = dict(bf16=(1e-2, 3e-2), fp16=(2e-2, 2e-2), fp32=(1e-4, 1e-4))[dtype_name]
    shapes = CORRECT_SHAPES
    if dtype_name != "bf16":
        shapes = shapes[1:]
    results = []
    for (b, h, s, dk, dv, cs) in shapes:
        x = _mlstm_inputs(torch, b, h, s, dk, dv, dtype, seed=s)
        g = torch.Generator(device=DEV).manual_seed(1)
        dh = torch.randn(b, h, s, dv, generator=g, device=DEV, dtype=torch.float64)
        dC = torch.randn(b, h, dk, dv, generator=g, device=DEV, dtype=torch.float64)
        out = []
        for run in ("ref", "triton"):
            leaves = [t.detach().to(torch.float64 if run == "ref" else dtype).requires_grad_() for t in x]
            if run == "ref":
                hh, (C, n, m) = mlstm_recurrent(*leaves, grad="stopgrad")
            else:
                hh, (C, n, m) = mlstm_chunkwise_triton(*leaves, chunk_size=cs)
            loss = (hh.double() * dh).sum() + (C.double() * dC).sum()
            grads = torch.autograd.grad(loss, leaves)
            out.append(dict(h=hh, C=C, n=n, **{f"d{k}": v for k, v in zip("qkvif", grads)}))
            del leaves, hh, C, n, m, grads, loss
        ref, tri = out
        errs = {}
        for key in ref:
            a, bb = tri[key].detach().double(), ref[key].detach().double()
            errs[key] = float((a - bb).abs().max() / bb.abs().max().clamp_min(1e-30))
            if not torch.isfinite(tri[key]).all():
                errs[key] = float("inf")
        limits = {k: (tol_h if k in ("h", "C", "n") else tol_g) for k in errs}
        ok = all(errs[k] <= limits[k] for k in errs)
        results.append(dict(shape=dict(B=b, H=h, S=s, DK=dk, DV=dv, chunk=cs), errors=errs, passed=ok))
        del out, ref, tri
        if DEV == "cuda":
            torch.cuda.empty_cache()
    emit(case=f"correct_{dtype_name}", status="ok", passed=all(r["passed"] for r in results),
         limits=dict(h_states=tol_h, grads=tol_g), results=results)


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
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else float("nan")
    emit(case=name, status="ok", fwd_ms=t_f, fwdbwd_ms=t_fb, peak_gb=peak,
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
    shape = (B, AH, S, AD) if layout == "bhsd" else (B, S, AH, AD)
    q, k, v = (torch.randn(*shape, device=DEV, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    return q, k, v, torch.randn(*shape, device=DEV, dtype=torch.bfloat16)


def _time_attn(name, fwd, q, k, v, do, extra):
    import torch

    with torch.no_grad():
        t_f = _bench(lambda: fwd(q, k, v))

    def fb():
        fwd(q, k, v).backward(do)

    t_fb = _bench(fb, grad_to_none=[q, k, v])
    emit(case=name, status="ok", fwd_ms=t_f, fwdbwd_ms=t_fb, shape=dict(B=B, H=AH, S=S, D=AD, dtype="bf16"), **extra)


def case_sdpa():
    import torch
    import torch.nn.functional as F

    q, k, v, do = _attn_inputs(torch)
    _time_attn("sdpa_causal", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v, do,
               {})


def case_flex():
    import torch

    # Our adapter (ops/swa/flex.py): compiled flex_attention, one cached block mask per window.
    from swax_megatron.ops.swa.flex import flex_sliding_window_attention

    q, k, v, do = _attn_inputs(torch)
    for w in WINDOWS:
        try:
            _time_attn(f"flex_w{w}", lambda q, k, v, w=w: flex_sliding_window_attention(q, k, v, w), q, k, v,
                       do, dict(window=w))
        except Exception as e:  # noqa: BLE001
            emit(case=f"flex_w{w}", status="error", reason=f"{type(e).__name__}: {str(e)[:300]}")


def case_layer_pair():
    """One SWAX-1.4B layer pair (X then S, hidden 2048, each with its SwiGLU MLP) through the real
    megatron model code, bf16, fwd+bwd at B=1 x S=16384 (the paper's sequence length), per window."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    from swax_megatron.models import SwaxConfig, SwaxModel, get_swax_block_spec
    from swax_megatron.models.attention import resolve_attention_backend
    from swax_megatron.parallel import cpu_compat

    seq = 16384 if not SMOKE else 128
    hidden, heads, mheads = (2048, 16, 4) if not SMOKE else (64, 2, 2)
    cpu_compat.apply()  # a no-op on GPU machines; lets --smoke run this case on CPU
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl" if DEV == "cuda" else "gloo", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    cpu_compat.model_parallel_seed(1234)
    backend = resolve_attention_backend("auto")
    from swax_megatron.config.schema import MLSTMConfig, SwaConfig

    mlstm = MLSTMConfig(num_heads=mheads, kernel="triton" if DEV == "cuda" else "torch",
                        chunk_size=128 if not SMOKE else 64)
    cfg = SwaxConfig(num_layers=2, hidden_size=hidden, num_attention_heads=heads, layer_pattern="XS",
                     mlstm=mlstm, swa=SwaConfig(window=2048), vocab_size=50304,
                     max_sequence_length=seq, params_dtype=torch.bfloat16, bf16=True,
                     attention_backend=backend)
    model = SwaxModel(cfg, get_swax_block_spec("te" if backend == "te" else "local"),
                      pre_process=False, post_process=False).to(DEV)
    x = torch.randn(seq, 1, hidden, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)
    rot = model.rotary_pos_emb(seq) if getattr(model, "rotary_pos_emb", None) is not None else None
    for w in WINDOWS:
        model.set_swa_window(w)

        def fwd():
            model.decoder.set_input_tensor(x)
            return model.decoder(None, rotary_pos_emb=rot)

        with torch.no_grad():
            t_f = _bench(fwd)
        t_fb = _bench(lambda: fwd().backward(dy), grad_to_none=[x, *model.parameters()])
        emit(case=f"pair_w{w}", status="ok", fwd_ms=t_f, fwdbwd_ms=t_fb, window=w, attention_backend=backend,
             shape=dict(B=1, S=seq, hidden=hidden, layers="XS", dtype="bf16"))
    dist.destroy_process_group()


def case_te():
    try:
        import transformer_engine.pytorch as te
    except Exception as e:  # noqa: BLE001
        for w in WINDOWS:
            emit(case=f"te_w{w}", status="skipped",
                 reason=f"transformer_engine does not import ({type(e).__name__}: {str(e)[:200]})")
        return
    import torch

    q, k, v, do = _attn_inputs(torch, layout="bshd")
    for w in WINDOWS:
        try:
            attn = te.DotProductAttention(AH, AD, attn_mask_type="causal", qkv_format="bshd", window_size=(w - 1, 0))
            _time_attn(f"te_w{w}", lambda q, k, v, attn=attn: attn(q, k, v), q, k, v, do,
                       dict(window=w, te_version=getattr(te, "__version__", None)))
        except Exception as e:  # noqa: BLE001
            emit(case=f"te_w{w}", status="error", reason=f"{type(e).__name__}: {str(e)[:300]}")


# name -> (function, kwargs, extra environment, what it measures); run in this order (most important first)
CASES = {
    "correct_bf16": (case_correct, dict(dtype_name="bf16"), {}, "own kernel bf16 vs float64 stopgrad"),
    "own": (case_own, dict(chunk=128), {}, "own mLSTM, chunk 128"),
    "tfla_xl": (case_tfla, dict(kind="xl"), {"DISABLE_LLVM_OPT": "1"}, "mlstm_kernels TFLA xl_chunk, chunk 128"),
    "tfla_limit": (case_tfla, dict(kind="limit"), {}, "mlstm_kernels limit_chunk, chunk 64"),
    "sdpa": (case_sdpa, {}, {}, "SDPA causal (32 x 128)"),
    "flex": (case_flex, {}, {}, "FlexAttention sliding window (32 x 128)"),
    "te": (case_te, {}, {}, "TE DotProductAttention sliding window (32 x 128)"),
    "pair": (case_layer_pair, {}, {}, "SWAX-1.4B layer pair (X + S, hidden 2048), S=16384, per window"),
    "correct_fp32": (case_correct, dict(dtype_name="fp32"), {}, "own kernel fp32 (tf32x3) vs float64"),
    "correct_fp16": (case_correct, dict(dtype_name="fp16"), {}, "own kernel fp16 vs float64"),
    "own_L256": (case_own, dict(chunk=256), {}, "own mLSTM, chunk 256"),
    "own_L64": (case_own, dict(chunk=64), {}, "own mLSTM, chunk 64"),
}
SWEEP = {
    "own_w4": (case_own, dict(chunk=128, num_warps=4), {}, "own mLSTM, chunk 128, 4 warps"),
    "own_bv64": (case_own, dict(chunk=128, block_v=64), {}, "own mLSTM, chunk 128, V tiles of 64"),
    "own_bl32": (case_own, dict(chunk=128, block_l=32), {}, "own mLSTM, chunk 128, inner blocks of 32"),
}


# -------------------------------------------------------------------------------------------- parent
def run_case(name: str, timeout: float) -> list[dict]:
    fn, kw, env_extra, _ = {**CASES, **SWEEP}[name]
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.time()
    try:
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", name], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        recs = [json.loads(line[len(MARK):]) for line in out.splitlines() if line.startswith(MARK)]
        return recs + [dict(case=name, status="error", reason=f"timeout after {timeout:.0f} s")]
    recs = [json.loads(line[len(MARK):]) for line in p.stdout.splitlines() if line.startswith(MARK)]
    for r in recs:
        r.setdefault("wall_s", round(time.time() - t0, 1))
    if p.returncode != 0 or not recs:
        tail = [ln for ln in (p.stderr or "").strip().splitlines() if ln.strip()][-3:]
        recs.append(dict(case=name, status="error", reason=f"exit code {p.returncode}: " + " | ".join(tail)[-400:]))
    return recs


def summary(recs: list[dict], smoke: bool = False) -> str:
    by = {r["case"]: r for r in recs if r.get("status") == "ok" and "fwdbwd_ms" in r}
    tfla = by.get("tfla_xl", {}).get("fwdbwd_ms")
    ref_ms, ref_label = (tfla, "TFLA (this run)") if tfla else (TFLA_ANCHOR_MS, "TFLA anchor 18.6 ms (H100)")
    lines = ["", f"{'case':<16} {'fwd ms':>9} {'fwd+bwd ms':>11} {'x ' + ref_label:>28}  note", "-" * 90]
    for r in recs:
        if "fwdbwd_ms" in r and r.get("status") == "ok":
            ratio = r["fwdbwd_ms"] / ref_ms
            note = f"peak {r['peak_gb']:.1f} GB" if r.get("peak_gb") == r.get("peak_gb") and "peak_gb" in r else ""
            lines.append(f"{r['case']:<16} {r['fwd_ms']:>9.2f} {r['fwdbwd_ms']:>11.2f} {ratio:>28.2f}  {note}")
        elif r.get("case", "").startswith("correct") and r.get("status") == "ok":
            for res in r["results"]:
                worst = max(res["errors"], key=res["errors"].get)
                errs = " ".join(f"{k}={v:.1e}" for k, v in res["errors"].items())
                lines.append(f"{r['case']:<16} {'PASS' if res['passed'] else 'FAIL':>9} {res['shape']}  worst "
                             f"{worst}; {errs}")
        else:
            lines.append(f"{r.get('case', '?'):<16} {r.get('status', '?')}: {r.get('reason', '')}")
    own = by.get("own_L128", {}).get("fwdbwd_ms")
    if own:
        r = own / ref_ms
        lines.append(f"\ntarget own fwd+bwd <= 0.9 x {ref_label}: {own:.2f} ms = {r:.2f}x -> "
                     f"{'MET' if r <= 0.9 else 'NOT MET'}" + (" (smoke run on CPU: meaningless)" if smoke else ""))
    return "\n".join(lines)


def env_info() -> dict:
    import torch

    info = dict(date=time.strftime("%Y-%m-%d %H:%M:%S"), python=sys.version.split()[0], torch=torch.__version__,
                cuda=torch.version.cuda)
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        info["triton"] = f"missing ({e})"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for mod in ("mlstm_kernels", "transformer_engine"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "installed")
        except Exception as e:  # noqa: BLE001
            info[mod] = f"missing ({type(e).__name__})"
    return info


AOT_SHAPES = [(1, 2, 512, DQK, DHV, 128), (2, 2, 300, 48, 80, 64)]  # (B, H, S, DK, DV, chunk): paper heads, ragged


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
    """Without a GPU: drive the real wrapper (forward and backward, with initial and final state gradients, full
    and ragged tiles) through a stand-in CUDA driver that compiles each kernel for sm_XX exactly as its first
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
                for (b, h, s, dk, dv, cs) in shapes:
                    cfg[0] = f"{dtype_name} {dk}x{dv} L{cs} S{s}"
                    x = [torch.randn(b, h, s, dk), torch.randn(b, h, s, dk), torch.randn(b, h, s, dv),
                         torch.randn(b, h, s), torch.randn(b, h, s)]
                    x = [t.to(dtype).requires_grad_() for t in x]
                    st = tuple(t.requires_grad_() for t in (torch.zeros(b, h, dk, dv), torch.zeros(b, h, dk),
                                                           torch.zeros(b, h)))
                    try:
                        hh, (C, n, _) = chunk.mlstm_chunkwise_triton(*x, chunk_size=cs, initial_state=st,
                                                                     **(tiling or {}))
                        (hh.float().sum() + C.sum() + n.sum()).backward()
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
    frame and spills. Exit status 1 when a configuration fails to compile or any kernel spills registers
    (spill stores or loads > 0): a spill is local-memory traffic inside the kernels' inner loops, and the
    tiling heuristics (ops/mlstm/triton/chunk.py pick_blocks) are chosen so that none does."""
    records, failed = aot_records(arches, dtypes, tiling=tiling)
    spills = []
    for r in records:
        line = (f"sm_{r['arch']} {r['config']:<26} {r['kernel']:<18} warps={r['warps']} registers={r['registers']} "
                f"stack={r['stack']} B spill stores={r['spill_stores']} B loads={r['spill_loads']} B "
                f"shared={r['shared']} B")
        print("  " + line)
        if r["spill_stores"] != 0 or r["spill_loads"] != 0:
            spills.append(line)
    for line in failed:
        print("  " + line)
    for line in spills:
        print(f"aot: SPILL {line}")
    worst = {}
    for r in records:
        key = (r["arch"], r["config"].split()[0])
        worst[key] = max(worst.get(key, 0), r["spill_stores"])
    print("aot: largest spill stores per arch and dtype: "
          + ", ".join(f"sm_{a} {d} {v} B" for (a, d), v in sorted(worst.items())))
    print(f"aot: {len(records)} kernels compiled, {len(failed)} configurations failed, {len(spills)} kernels spill")
    return 1 if failed or spills else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="cases, in run order: " + ", ".join(CASES) + "; with --sweep also "
                                        + ", ".join(SWEEP))
    ap.add_argument("--only", help="comma-separated case names (see below)")
    ap.add_argument("--sweep", action="store_true", help="also time a few other tilings of the own kernel")
    ap.add_argument("--budget", type=float, default=285.0, help="wall-clock seconds for all cases (default 285)")
    ap.add_argument("--case-timeout", type=float, default=150.0, help="seconds per case subprocess (default 150)")
    ap.add_argument("--json-out", help="also write every JSON record (and the environment) to this file")
    ap.add_argument("--aot", action="store_true", help="compile-only check for sm_90 and sm_80, no GPU needed; "
                    "exit status 1 when a kernel spills registers")
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
        fn, kw, _, _ = {**CASES, **SWEEP}[args.case]
        try:
            fn(**kw)
        except Exception as e:  # noqa: BLE001
            emit(case=args.case, status="error", reason=f"{type(e).__name__}: {str(e)[:400]}",
                 traceback=traceback.format_exc()[-1500:])
            return 1
        return 0

    known = {**CASES, **SWEEP}
    unknown = [n.strip() for n in (args.only or "").split(",") if n.strip() and n.strip() not in known]
    if unknown:
        print(f"gpu_check: unknown case(s) {unknown}; known: {list(known)}", file=sys.stderr)
        return 2

    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False). "
              "This check needs an NVIDIA GPU (H100/H200); `--aot` compiles the kernels for sm_90 without one.",
              file=sys.stderr)
        return 2
    names = list(CASES) + (list(SWEEP) if args.sweep else [])
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
    info = env_info()
    print("gpu_check environment: " + json.dumps(info), flush=True)
    start = time.time()
    recs = []
    for name in names:
        left = args.budget - (time.time() - start)
        if left < 20:
            recs.append(dict(case=name, status="skipped", reason=f"time budget of {args.budget:.0f} s used up"))
            print(MARK + json.dumps(recs[-1]), flush=True)
            continue
        print(f"-- {name}: {({**CASES, **SWEEP})[name][3]}", flush=True)
        for r in run_case(name, min(args.case_timeout, left)):
            recs.append(r)
            print(MARK + json.dumps(r), flush=True)
    text = summary(recs, smoke=args.smoke)
    print(text)
    print(f"\ntotal {time.time() - start:.0f} s on {info.get('gpu')}; torch {info['torch']}, triton {info['triton']}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(dict(environment=info, records=recs), f, indent=1)
    failed = [r for r in recs if r.get("case", "").startswith("correct_bf16") and not r.get("passed", False)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
