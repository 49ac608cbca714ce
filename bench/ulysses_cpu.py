"""Ulysses sequence parallelism on CPU (issue 15): tokens/s and peak memory per rank against the
sequence length at degrees 1 and 2, and the longest trainable sequence under a fixed memory budget.

    python bench/ulysses_cpu.py                               # seqs 2048..16384, budget 400 MiB
    python bench/ulysses_cpu.py --quick                       # smoke run
    python bench/ulysses_cpu.py --write-results

One forward + backward of a tiny SWAX (XS*2, hidden 128, 4 attention / 2 mLSTM heads, window 128,
vocabulary 2048, fp32, micro batch 1) on random tokens; at degree u the sequence is sharded over
u gloo processes (1 thread each) and DeepSpeed's all-to-alls run around each mixer. Peak memory:
the running sum of torch's CPU allocations during the step (torch profiler), i.e. activations and
gradients, per rank. Longest sequence: doubled from the smallest until the per-rank peak exceeds
the budget. Time: min over repeats of the slowest rank.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from benchutil import cpu_model, emit, replace_section

from swax_megatron.plan.measure import peak_allocated

REPO = Path(__file__).resolve().parents[1]
VOCAB = 2048


def _recipe(u: int, seq: int):
    from swax_megatron.config.resolve import resolve

    return resolve(str(REPO / "recipes/tiny/swax.yaml"), [
        "model.layer_pattern=XS*2", "model.hidden_size=128", "model.num_attention_heads=4",
        "model.num_query_groups=2", "model.mlstm.num_heads=2", "model.swa.window=128",
        f"model.vocab_size={VOCAB}", "model.attention_backend=torch", f"train.seq_length={seq}",
        "train.micro_batch_size=1", "train.global_batch_size=1", f"parallel.ulysses_size={u}",
        f"slurm.gpus_per_node={u}"]).recipe


def _worker(rank, u, port, seqs, repeats, budget, out):
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from megatron.core.utils import get_batch_on_this_cp_rank

    from swax_megatron.models.model import swax_model_from_recipe
    from swax_megatron.parallel import cpu_compat
    from swax_megatron.training import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(u),
                      LOCAL_RANK=str(rank))
    cpu_compat.apply()
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=u)
    distributed.init_model_parallel(1, 1, 1234, ulysses=u)
    rows = []

    def measure(seq):
        torch.manual_seed(0)
        model = swax_model_from_recipe(_recipe(u, seq), backend="local")
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        t = torch.randint(0, VOCAB, (1, seq + 1), generator=torch.Generator().manual_seed(1))
        b = get_batch_on_this_cp_rank({"x": t[:, :-1], "y": t[:, 1:]})

        def step():
            model(b["x"], labels=b["y"]).sum().backward()

        step()  # warm-up: RoPE tables and kernels' buffers are built once
        times = []
        for _ in range(repeats):
            torch.distributed.barrier()
            t0 = time.perf_counter()
            step()
            dt = torch.tensor([time.perf_counter() - t0])
            torch.distributed.all_reduce(dt, op=torch.distributed.ReduceOp.MAX)  # the slowest rank
            times.append(float(dt))
        peak = torch.tensor([float(peak_allocated(step))])
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
        return min(times), int(peak)

    for seq in seqs:
        step_s, peak = measure(seq)
        rows.append({"bench": "ulysses", "degree": u, "seq": seq, "step_s_min": step_s,
                     "tokens_per_s": seq / step_s, "peak_mib_per_rank": peak / 2**20})
    longest, seq = None, min(seqs)
    while budget:
        _, peak = measure(seq)
        if peak > budget * 2**20:
            break
        longest, seq = seq, seq * 2
    if rank == 0:
        out.put((rows, longest))
    distributed.teardown()


def run_degree(u, seqs, repeats, budget):
    from swax_megatron.training.distributed import free_port

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, u, port, seqs, repeats, budget, out)) for r in range(u)]
    for p in procs:
        p.start()
    rows, longest = out.get(timeout=3600)
    for p in procs:
        p.join()
    return rows, longest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seqs", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-mib", type=float, default=400.0, help="per-rank memory budget for the longest sequence")
    p.add_argument("--quick", action="store_true", help="smoke run: seqs 256 512, 1 repeat, budget 8 MiB")
    p.add_argument("--write-results", action="store_true", help="replace this bench's section of bench/RESULTS.md")
    args = p.parse_args(argv)
    if args.quick:
        args.seqs, args.repeats, args.budget_mib = [256, 512], 1, 8.0
    rows, longest = [], {}
    for u in (1, 2):
        r, longest[u] = run_degree(u, args.seqs, args.repeats, args.budget_mib)
        rows += r
        for row in r:
            emit(row)
        emit({"bench": "ulysses_longest", "degree": u, "budget_mib": args.budget_mib, "longest_seq": longest[u]})
    by = {(r["degree"], r["seq"]): r for r in rows}
    ratios = [{"ratio": "peak memory per rank, degree 2 / degree 1", "seq": s,
               "value": by[(2, s)]["peak_mib_per_rank"] / by[(1, s)]["peak_mib_per_rank"]} for s in args.seqs]
    ratios += [{"ratio": "tokens/s, degree 2 / degree 1", "seq": s,
                "value": by[(2, s)]["tokens_per_s"] / by[(1, s)]["tokens_per_s"]} for s in args.seqs]
    for r in ratios:
        emit(r)
    if args.write_results:
        write_results(rows, ratios, longest, args, argv if argv is not None else sys.argv[1:])
    return 0


SECTION = "## Ulysses sequence parallelism on CPU (issue 15)"


def write_results(rows, ratios, longest, args, argv) -> None:
    path = REPO / "bench" / "RESULTS.md"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [SECTION, "",
             f"{now}; {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}; 1 thread per rank; load "
             f"average {load}. Command: `python bench/ulysses_cpu.py {' '.join(argv)}`. Forward + backward of a "
             f"tiny SWAX (XS*2, hidden 128, window 128), micro batch 1; peak = torch CPU allocations during the "
             f"step, per rank.", "",
             "| degree | seq | step s (min, slowest rank) | tokens/s | peak MiB per rank |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['degree']} | {r['seq']:,} | {r['step_s_min']:.3f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['peak_mib_per_rank']:.1f} |")
    lines += ["", f"Longest sequence (doubling from {min(args.seqs):,}) under {args.budget_mib:g} MiB per rank: "
              + ", ".join(f"degree {u}: {v:,}" if v else f"degree {u}: none" for u, v in longest.items()) + ".", "",
              "| ratio | seq | value |", "|---|---|---|"]
    for r in ratios:
        lines.append(f"| {r['ratio']} | {r['seq']:,} | {r['value']:.2f} |")
    replace_section(path, SECTION, lines)


if __name__ == "__main__":
    sys.exit(main())
