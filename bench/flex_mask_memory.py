#!/usr/bin/env python
"""Peak memory of building FlexAttention's sliding-window block mask, against sequence length.

    python bench/flex_mask_memory.py                        # window 2048, S = 1k .. 131k
    python bench/flex_mask_memory.py --window 128 --lengths 4096,16384 --old-max 8192

Two builders of the same BlockMask (tests/ops/test_swa_flex.py checks they are equal field by
field):
  create_block_mask  torch's builder, the one ops/swa/flex.py used before: it evaluates the
                     mask on a dense S x S grid (O(S^2) bytes, ~10 per entry).
  band_block_mask    ops/swa/flex.py now: the index tables straight from the band geometry.

Each measurement runs in its own process (glibc keeps freed heap memory, which would hide a
second allocation of the same size), which resets the kernel's peak-RSS counter (VmHWM, via
/proc/self/clear_refs) after importing torch and warming both builders on a tiny length, builds
one mask and reports the peak RSS increase. `block_mask_mib` is the size of the result itself:
torch's BlockMask layout holds four [S/128, S/128] int32 index tables, so the result grows with
(S/128)^2 (16 MiB at 131k) whatever builds it; the point is the S x S grid that the old builder
adds on top. Linux only. One JSON object per line; the last line has the growth per doubling.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

from benchutil import cpu_model, emit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def measure(builder: str, S: int, window: int) -> dict:
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    from swax_megatron.ops.swa.flex import BLOCK_SIZE, band_block_mask, band_mask_mod

    def build(s):
        if builder == "create_block_mask":
            w = torch.tensor(min(window, s), dtype=torch.int32)
            return create_block_mask(band_mask_mod(w), None, None, s, s, device="cpu", BLOCK_SIZE=BLOCK_SIZE)
        return band_block_mask(s, window, "cpu", BLOCK_SIZE)

    build(2 * BLOCK_SIZE)  # first-call costs (lazy imports, vmap set-up) are not the mask's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS
    base = _status_kib("VmRSS")
    t0 = time.perf_counter()
    mask = build(S)
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    tensors = [getattr(mask, name) for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks",
                                                "full_kv_indices", "q_num_blocks", "q_indices",
                                                "full_q_num_blocks", "full_q_indices")]
    size = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    return dict(builder=builder, S=S, window=window, peak_rss_increase_mib=round((peak - base) / 1024, 2),
                block_mask_mib=round(size / 2**20, 3), build_s=round(seconds, 3))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768,65536,131072")
    ap.add_argument("--old-max", type=int, default=16384,
                    help="longest S for create_block_mask (it needs ~10 * S^2 bytes: 2.6 GiB at 16384)")
    ap.add_argument("--one", nargs=2, metavar=("BUILDER", "S"), help=argparse.SUPPRESS)  # internal
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.window)))
        return 0

    import torch

    emit(dict(machine=cpu_model(), torch=torch.__version__, window=args.window))
    lengths = [int(s) for s in args.lengths.split(",")]
    rows = []
    for builder in ("create_block_mask", "band_block_mask"):
        for S in lengths:
            if builder == "create_block_mask" and S > args.old_max:
                continue
            env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
            p = subprocess.run([sys.executable, os.path.abspath(__file__), "--window", str(args.window),
                                "--one", builder, str(S)], capture_output=True, text=True, env=env)
            if p.returncode != 0:
                emit(dict(builder=builder, S=S, error=p.stderr.strip().splitlines()[-1:]))
                continue
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            emit(rows[-1])
    growth = {}
    for builder in ("create_block_mask", "band_block_mask"):
        mine = sorted((r["S"], r["peak_rss_increase_mib"]) for r in rows if r["builder"] == builder)
        growth[builder] = {f"{a}->{b}": round(pb / pa, 2) if pa > 0 else None
                           for (a, pa), (b, pb) in zip(mine, mine[1:]) if b == 2 * a}
    emit(dict(peak_growth_per_doubling=growth,
              note="x4 per doubling = O(S^2); the band builder's peak is its result, four (S/128)^2 "
                   "int32 tables, plus O(S/128) vectors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
