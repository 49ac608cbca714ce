"""CPU benchmarks of the ops (issue 3): prints one JSON object per line, rows then ratios.

    python bench/ops_cpu.py                 # everything, default threads
    python bench/ops_cpu.py --only mlstm    # or: --only swa
    python bench/ops_cpu.py --threads 1 --repeats 7

mLSTM: chunkwise forward+backward, fp32, B=1, H=4, D=64, S in {2048, 8192}, chunk 64, against
mlstm_kernels' pure-PyTorch `chunkwise--native_custbw` (optional `bench` extra; only called,
never copied). Target: swax >= 1.2x its tokens/s.
SWA: forward+backward, fp32, B=1, H=4, D=64, window 128, S in {1024, 4096, 8192}: the chunked
O(S*window) path against the dense masked reference (and torch SDPA with the band mask, for
information). Targets: chunked >= 10x the masked path at S=8192; doubling S costs <= 2.2x.

All sides of a comparison are timed in the same process, interleaved repeat by repeat, so load
from other processes hits them alike. Upstream gradients are dense random tensors. Times are
wall-clock (min and median over the repeats) plus the minimum process CPU time; ratios use the
minima ("value": wall, "value_cpu": CPU time, steadier when other processes share the cores).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import time

import torch
from benchutil import cpu_model, emit

from swax_megatron.ops.mlstm import mlstm_chunkwise
from swax_megatron.ops.swa import (
    sliding_window_attention_chunked,
    sliding_window_attention_masked,
    sliding_window_attention_sdpa,
)


class Times(list):
    """Wall-clock seconds of each repeat; .cpu holds the process CPU seconds of the same repeats."""

    def __init__(self):
        super().__init__()
        self.cpu = []


def time_interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """{name: Times} with the callables run in turn, repeat by repeat."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: Times() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            times[name].cpu.append(time.process_time() - c0)
    return times


def stats(ts: Times) -> dict:
    # CPU time is less disturbed than wall time when other processes share the cores.
    return {"min_ms": round(min(ts) * 1e3, 2), "median_ms": round(statistics.median(ts) * 1e3, 2),
            "cpu_min_ms": round(min(ts.cpu) * 1e3, 2)}


def ratio_row(label: str, slow: Times, fast: Times, **extra) -> dict:
    return {"ratio": label, **extra, "value": round(min(slow) / min(fast), 2),
            "value_cpu": round(min(slow.cpu) / min(fast.cpu), 2)}


# ----------------------------------------------------------------------------------------- mLSTM

def mlstm_fwbw(fn, inputs, grad_out):
    def run():
        for t in inputs:
            t.grad = None
        h = fn(*inputs)
        h.backward(grad_out)
    return run


def bench_mlstm(args) -> list:
    B, H, D, L = 1, 4, 64, args.chunk
    try:
        from mlstm_kernels.torch import get_mlstm_kernel
        baseline = get_mlstm_kernel("chunkwise--native_custbw")
        import mlstm_kernels
        baseline_version = getattr(mlstm_kernels, "__version__", "installed")
    except ImportError:
        baseline, baseline_version = None, None
    emit({"bench": "mlstm_fwbw", "baseline": "mlstm_kernels chunkwise--native_custbw",
          "baseline_available": baseline is not None, "baseline_version": baseline_version})
    ratios = []
    for S in args.mlstm_seq:
        g = torch.Generator().manual_seed(S)
        q, k, v = (torch.randn(B, H, S, D, generator=g) for _ in range(3))
        i = torch.randn(B, H, S, generator=g) - 3.0  # a trained-looking input gate
        f = torch.randn(B, H, S, generator=g) + 3.0  # forget gate near 1
        inputs = [t.requires_grad_() for t in (q, k, v, i, f)]
        dh = torch.randn(B, H, S, D, generator=g)
        fns = {"swax_chunkwise_stopgrad": mlstm_fwbw(lambda *x: mlstm_chunkwise(*x, chunk_size=L)[0], inputs, dh)}
        if baseline is not None:
            fns["mlstm_kernels_native_custbw"] = mlstm_fwbw(lambda *x: baseline(*x, chunk_size=L), inputs, dh)
        times = time_interleaved(fns, args.repeats)
        for name, ts in times.items():
            emit({"bench": "mlstm_fwbw", "impl": name, "B": B, "H": H, "S": S, "Dqk": D, "Dv": D, "chunk": L,
                  "dtype": "float32", **stats(ts), "tokens_per_s": round(B * S / min(ts))})
        if baseline is not None:
            row = ratio_row("mlstm_fwbw speed swax / mlstm_kernels", times["mlstm_kernels_native_custbw"],
                            times["swax_chunkwise_stopgrad"], S=S)
            ratios.append({**row, "target": ">= 1.2", "met": row["value"] >= 1.2})
    return ratios


# ------------------------------------------------------------------------------------------- SWA

def swa_fwbw(fn, inputs, grad_out, window):
    def run():
        for t in inputs:
            t.grad = None
        fn(*inputs, window).backward(grad_out)
    return run


def bench_swa(args) -> list:
    B, H, D, W = 1, 4, 64, args.window
    seqs = sorted(args.swa_seq)
    data = {}
    for S in seqs:
        g = torch.Generator().manual_seed(S)
        data[S] = ([torch.randn(B, H, S, D, generator=g).requires_grad_() for _ in range(3)],
                   torch.randn(B, H, S, D, generator=g))
    shape = {"B": B, "H": H, "D": D, "window": W, "dtype": "float32"}

    # Scaling: the chunked path at every S, interleaved so that load hits every length alike.
    times = time_interleaved({S: swa_fwbw(sliding_window_attention_chunked, *data[S], W) for S in seqs}, args.repeats)
    for S, ts in times.items():
        emit({"bench": "swa_fwbw", "phase": "scaling", "impl": "chunked", "S": S, **shape, **stats(ts),
              "tokens_per_s": round(B * S / min(ts))})
    ratios = []
    for s0, s1 in zip(seqs[:-1], seqs[1:]):
        n = math.log2(s1 / s0)
        per_doubling = (min(times[s1]) / min(times[s0])) ** (1 / n)
        per_doubling_cpu = (min(times[s1].cpu) / min(times[s0].cpu)) ** (1 / n)
        ratios.append({"ratio": "swa chunked time growth per doubling of S", "S_from": s0, "S_to": s1,
                       "value": round(per_doubling, 2), "value_cpu": round(per_doubling_cpu, 2),
                       "target": "<= 2.2", "met": per_doubling <= 2.2})

    # Against the dense paths, same S, interleaved. They cost O(S^2): fewer repeats at long S.
    for S in seqs:
        fns = {"chunked": swa_fwbw(sliding_window_attention_chunked, *data[S], W),
               "sdpa_dense": swa_fwbw(sliding_window_attention_sdpa, *data[S], W),
               "masked_dense": swa_fwbw(sliding_window_attention_masked, *data[S], W)}
        reps = args.repeats if S <= 4096 else max(2, args.repeats // 2)
        times = time_interleaved(fns, reps)
        for name, ts in times.items():
            emit({"bench": "swa_fwbw", "phase": "vs_dense", "impl": name, "S": S, **shape, **stats(ts),
                  "tokens_per_s": round(B * S / min(ts))})
        for dense in ("masked_dense", "sdpa_dense"):
            row = ratio_row(f"swa_fwbw speed chunked / {dense}", times[dense], times["chunked"], S=S, window=W)
            if dense == "masked_dense" and S == seqs[-1]:
                row.update(target=">= 10", met=row["value"] >= 10)
            ratios.append(row)
    return ratios


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["mlstm", "swa"], default=None)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--mlstm-seq", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--swa-seq", type=int, nargs="+", default=[1024, 4096, 8192])
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    emit({"meta": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "cpu": cpu_model(), "python": platform.python_version(),
                   "repeats": args.repeats, "loadavg_1m_start": round(os.getloadavg()[0], 2)}})
    ratios = []
    if args.only in (None, "mlstm"):
        ratios += bench_mlstm(args)
    if args.only in (None, "swa"):
        ratios += bench_swa(args)
    for r in ratios:
        emit(r)
    emit({"meta_end": {"loadavg_1m_end": round(os.getloadavg()[0], 2)}})


if __name__ == "__main__":
    main()
