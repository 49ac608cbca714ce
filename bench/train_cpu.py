"""CPU training throughput (issue 5): prints one JSON object per line, rows then ratios.

    python bench/train_cpu.py                            # everything, default threads
    python bench/train_cpu.py --repeats 7 --threads 2
    python bench/train_cpu.py --write-results            # also append a section to RESULTS.md

One full training step (forward + backward over the micro-batches, grad norm, clip, AdamW
update) of the real trainer (swax_megatron.training.engine.train_step: megatron DDP + optimizer)
in one process, fp32, on random tokens, 2048 tokens per step:

1. tokens/s of the tiny SWAX (recipes/tiny/swax.yaml, pattern XS*2, hidden 128, windows 32 and
   128) against its full-attention twin (recipes/tiny/transformer.yaml, G*4) whose MLP width is
   set so that both have the same parameter count, at seq 512 (micro batch 4) and seq 2048
   (micro batch 1);
2. time per step of the SWAX as the window changes (seq 2048, windows 32 ... 2048).

All configurations are timed in the same process, interleaved repeat by repeat, so load from
other processes hits them alike. Min and median over the repeats are reported; ratios use the
minimum.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
from benchutil import cpu_model, emit

REPO = Path(__file__).resolve().parents[1]
VOCAB = 2048
TOKENS_PER_STEP = 2048


def init_single_process(seed: int) -> None:
    from swax_megatron.parallel import cpu_compat
    from swax_megatron.training import distributed

    cpu_compat.apply()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=0, world_size=1)
    distributed.init_model_parallel(1, 1, seed)


def engine_for(recipe_file: str, seq: int, overrides=()):
    from swax_megatron.config.resolve import resolve
    from swax_megatron.training.engine import build_engine

    micro = TOKENS_PER_STEP // seq
    recipe = resolve(str(REPO / recipe_file), [
        f"train.seq_length={seq}", f"train.micro_batch_size={micro}",
        f"train.global_batch_size={micro}", "slurm.gpus_per_node=1", *overrides]).recipe
    return build_engine(recipe, VOCAB, torch.device("cpu"))


def n_params(engine) -> int:
    return sum(p.numel() for p in engine.model.parameters())


def twin_ffn(seq: int, target: int) -> int:
    """MLP width of the G*4 twin whose parameter count is closest to `target`."""
    base = engine_for("recipes/tiny/transformer.yaml", seq)
    f0 = base.config.ffn_hidden_size
    p0 = n_params(base)
    p1 = n_params(engine_for("recipes/tiny/transformer.yaml", seq,
                             [f"model.ffn_hidden_size={f0 + 64}"]))
    return max(1, round(f0 + (target - p0) * 64 / (p1 - p0)))


def step_fn(engine, seq: int, window: int, seed: int):
    from swax_megatron.training.engine import train_step

    g = torch.Generator().manual_seed(seed)
    micro = TOKENS_PER_STEP // seq
    t = torch.randint(0, VOCAB, (micro, seq + 1), generator=g)
    batches = [{"tokens": t[:, :-1], "labels": t[:, 1:], "loss_mask": torch.ones(micro, seq)}]

    def run():
        train_step(engine, batches, window=window, lr=1e-4, weight_decay=0.1)

    return run


def time_interleaved(fns: dict, repeats: int, warmup: int) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seqs", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--windows", type=int, nargs="+", default=[32, 128, 512, 2048])
    p.add_argument("--write-results", action="store_true",
                   help="append a section to bench/RESULTS.md")
    args = p.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    init_single_process(1234)
    rows = []

    def record(row):
        rows.append(row)
        emit(row)

    # 1. SWAX vs the equal-parameter full-attention twin.
    ratios = []
    for seq in args.seqs:
        swax = engine_for("recipes/tiny/swax.yaml", seq)
        target = n_params(swax)
        ffn = twin_ffn(seq, target)
        twin = engine_for("recipes/tiny/transformer.yaml", seq, [f"model.ffn_hidden_size={ffn}"])
        fns = {("swax", 32): step_fn(swax, seq, 32, 0), ("swax", 128): step_fn(swax, seq, 128, 0),
               ("transformer", None): step_fn(twin, seq, seq, 0)}
        times = time_interleaved(fns, args.repeats, args.warmup)
        best = {}
        for (model, window), ts in times.items():
            best[(model, window)] = min(ts)
            record({"bench": "train_step", "model": model, "seq": seq, "window": window,
                    "params": n_params(swax if model == "swax" else twin),
                    "ffn_hidden_size": (swax if model == "swax" else twin).config.ffn_hidden_size,
                    "tokens_per_step": TOKENS_PER_STEP, "step_s_min": min(ts),
                    "step_s_median": statistics.median(ts),
                    "tokens_per_s": TOKENS_PER_STEP / min(ts), "threads": torch.get_num_threads()})
        for w in (32, 128):
            ratios.append({"ratio": f"swax(w={w}) / transformer tokens/s", "seq": seq,
                           "value": best[("transformer", None)] / best[("swax", w)]})
        del swax, twin

    # 2. SWAX step time against the window (seq = the largest).
    seq = max(args.seqs)
    swax = engine_for("recipes/tiny/swax.yaml", seq)
    windows = [w for w in args.windows if w <= seq]
    times = time_interleaved({w: step_fn(swax, seq, w, 1) for w in windows}, args.repeats,
                             args.warmup)
    for w, ts in times.items():
        record({"bench": "step_vs_window", "model": "swax", "seq": seq, "window": w,
                "step_s_min": min(ts), "step_s_median": statistics.median(ts),
                "tokens_per_s": TOKENS_PER_STEP / min(ts)})
    ratios.append({"ratio": f"step time w={max(windows)} / w={min(windows)}", "seq": seq,
                   "value": min(times[max(windows)]) / min(times[min(windows)])})
    for r in ratios:
        emit(r)
    if args.write_results:
        write_results(rows, ratios, argv if argv is not None else sys.argv[1:])
    torch.distributed.destroy_process_group()
    return 0


def write_results(rows, ratios, argv) -> None:
    path = REPO / "bench" / "RESULTS.md"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "", f"## Training throughput on CPU ({now})", "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{rows[0]['threads']} thread(s); load average {load} (shared machine: min over "
        f"interleaved repeats).  ",
        f"Command: `python bench/train_cpu.py {' '.join(argv)}`.  ",
        "One training step (fwd + bwd + grad clip + AdamW through megatron DDP), fp32, one "
        f"process, {TOKENS_PER_STEP} tokens per step, random tokens, vocabulary {VOCAB}.", "",
        "SWAX (XS*2, hidden 128) against its full-attention twin (G*4, MLP width set for the same "
        "parameter count):", "",
        "| model | seq | window | params | step s (min) | step s (median) | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["bench"] == "train_step":
            lines.append(f"| {r['model']} | {r['seq']} | {r['window'] or 'full'} | "
                         f"{r['params']:,} | {r['step_s_min']:.3f} | {r['step_s_median']:.3f} | "
                         f"{r['tokens_per_s']:,.0f} |")
    lines += ["", "SWAX step time as the window changes:", "",
              "| seq | window | step s (min) | step s (median) | tokens/s |",
              "|---|---|---|---|---|"]
    for r in rows:
        if r["bench"] == "step_vs_window":
            lines.append(f"| {r['seq']} | {r['window']} | {r['step_s_min']:.3f} | "
                         f"{r['step_s_median']:.3f} | {r['tokens_per_s']:,.0f} |")
    lines += ["", "| ratio | seq | value |", "|---|---|---|"]
    lines += [f"| {r['ratio']} | {r['seq']} | {r['value']:.2f} |" for r in ratios]
    text = "\n".join(lines) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        if path.stat().st_size == 0:
            f.write("# Benchmark results\n")
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
