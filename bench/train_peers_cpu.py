"""SWAX training throughput on CPU against the models a user would otherwise pick (issue 15).

    python bench/train_peers_cpu.py                          # ~1M and ~10M parameters, seq 2048
    python bench/train_peers_cpu.py --quick                  # smoke run: ~1M, seq 256, 2 repeats
    python bench/train_peers_cpu.py --repeats 5 --threads 1 --write-results

One training step = forward + backward + grad clip (1.0) + AdamW update, fp32, batch 1 x seq 2048 tokens of
random ids (vocabulary 2048), one process:

  swax     the framework's own step (swax_megatron.training.engine.train_step: megatron DDP + megatron
           optimizer) of the tiny SWAX recipe (recipes/tiny/swax.yaml, XS*2) at window 128, resized;
  xlstm    transformers' xLSTMForCausalLM (pure mLSTM, the xLSTM-7B block; without the `xlstm` package it
           runs its own torch chunkwise kernel with autograd, mode "train", chunk 64), same hidden size, 4
           blocks, mLSTM heads and qk/v factors of the SWAX mLSTM layer;
  mistral  transformers' MistralForCausalLM with sliding_window 128 (Llama-style; sdpa attention), 4 layers,
           same hidden size, heads and kv heads as the SWAX attention layers;
peers use torch.optim.AdamW + clip_grad_norm_ (what a user's loop would), and each peer's feed-forward width
is set so its parameter count matches the SWAX model's (linear in the width).

All models of one size are timed in the same process, interleaved repeat by repeat, so load from other
processes hits them alike; min (and median) over repeats; ratios use the minimum. Goal (issue 15): the SWAX
step at least 1.5x the faster peer's tokens/s.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import warnings
from pathlib import Path

import torch
from benchutil import cpu_model, emit, replace_section
from train_cpu import VOCAB, engine_for, init_single_process, n_params, time_interleaved

REPO = Path(__file__).resolve().parents[1]
WINDOW = 128
# name -> SWAX overrides of recipes/tiny/swax.yaml (hidden, attention heads / kv heads, mLSTM heads)
SIZES = {
    "1M": dict(hidden=128, heads=4, groups=2, mlstm_heads=2),
    "10M": dict(hidden=384, heads=6, groups=2, mlstm_heads=4),
}


def swax_overrides(size: dict, seq: int) -> list:
    return [f"model.hidden_size={size['hidden']}", f"model.num_attention_heads={size['heads']}",
            f"model.num_query_groups={size['groups']}", f"model.mlstm.num_heads={size['mlstm_heads']}",
            f"model.swa.window={WINDOW}", f"train.window_schedule.long={WINDOW}",
            "model.tie_embeddings=false"]


def xlstm_model(size: dict, ffn: int):
    from transformers import xLSTMConfig, xLSTMForCausalLM

    h = size["hidden"]
    cfg = xLSTMConfig(vocab_size=VOCAB, hidden_size=h, num_hidden_layers=4, num_heads=size["mlstm_heads"],
                      qk_dim_factor=0.5, v_dim_factor=1.0, ffn_proj_factor=ffn / h, ffn_round_up_to_multiple_of=1,
                      tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=None,
                      mode="train", chunkwise_kernel="chunkwise--native_autograd",
                      sequence_kernel="native_sequence__native", step_kernel="native", chunk_size=64,
                      autocast_kernel_dtype="float32", inference_state_dtype="float32", use_cache=False)
    torch.manual_seed(0)
    return xLSTMForCausalLM(cfg)


def mistral_model(size: dict, ffn: int):
    from transformers import MistralConfig, MistralForCausalLM

    h = size["hidden"]
    cfg = MistralConfig(vocab_size=VOCAB, hidden_size=h, intermediate_size=ffn, num_hidden_layers=4,
                        num_attention_heads=size["heads"], num_key_value_heads=size["groups"],
                        head_dim=h // size["heads"], sliding_window=WINDOW, max_position_embeddings=65536,
                        tie_word_embeddings=False, use_cache=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    return MistralForCausalLM(cfg)


def matched_width(build, size: dict, target: int) -> int:
    """Feed-forward width whose parameter count is closest to `target` (parameters are linear in it)."""
    a, b = 4 * size["hidden"], 4 * size["hidden"] + 64
    pa = sum(p.numel() for p in build(size, a).parameters())
    pb = sum(p.numel() for p in build(size, b).parameters())
    return max(1, round(a + (target - pa) * 64 / (pb - pa)))


def hf_step(model, seq: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (1, seq + 1), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    model.train()

    def run():
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids[:, :-1], labels=ids[:, 1:].contiguous(), use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return run


def swax_step(engine, seq: int, seed: int):
    from swax_megatron.training.engine import train_step

    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, VOCAB, (1, seq + 1), generator=g)
    batches = [{"tokens": t[:, :-1], "labels": t[:, 1:], "loss_mask": torch.ones(1, seq)}]

    def run():
        train_step(engine, batches, window=WINDOW, lr=1e-4, weight_decay=0.1)

    return run


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")


def matmul_share(fn, steps: int = 2) -> float:
    """Fraction of one step's CPU self time spent in matrix products (torch profiler, `steps` steps)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    ka = prof.key_averages()
    total = sum(k.self_cpu_time_total for k in ka)
    return sum(k.self_cpu_time_total for k in ka if k.key in MATMULS) / total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run: 1M only, seq 256, 2 repeats")
    p.add_argument("--write-results", action="store_true", help="replace this bench's section of bench/RESULTS.md")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.seq, args.repeats, args.warmup = ["1M"], 256, 2, 1
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    init_single_process(1234)
    rows, ratios = [], []
    for name in args.sizes:
        size = SIZES[name]
        overrides = swax_overrides(size, args.seq)
        engine = engine_for("recipes/tiny/swax.yaml", args.seq, overrides)
        target = n_params(engine)
        models = {"xlstm": xlstm_model(size, matched_width(xlstm_model, size, target)),
                  "mistral": mistral_model(size, matched_width(mistral_model, size, target))}
        fns = {"swax": swax_step(engine, args.seq, 0),
               **{k: hf_step(m, args.seq, 0) for k, m in models.items()}}
        times = time_interleaved(fns, args.repeats, args.warmup)
        params = {"swax": target, **{k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}}
        best = {k: min(ts) for k, ts in times.items()}
        share = {k: matmul_share(fn) for k, fn in fns.items()}
        for k, ts in times.items():
            row = {"bench": "train_peers", "size": name, "model": k, "params": params[k], "seq": args.seq,
                   "window": WINDOW if k != "xlstm" else None, "step_s_min": best[k],
                   "step_s_median": statistics.median(ts), "tokens_per_s": args.seq / best[k],
                   "matmul_share": share[k],
                   "threads": torch.get_num_threads()}
            rows.append(row)
            emit(row)
        faster = min(("xlstm", "mistral"), key=lambda k: best[k])
        # The matrix products do the same FLOPs in all three (matched parameters): a SWAX step cannot take
        # less than its own matmul time, so the peer's step over it bounds the reachable ratio.
        ratio = {"ratio": f"swax / {faster} (the faster peer) tokens/s", "size": name, "seq": args.seq,
                 "value": best[faster] / best["swax"], "goal": 1.5,
                 "ceiling": best[faster] / (best["swax"] * share["swax"])}
        ratios.append(ratio)
        emit(ratio)
        del engine, models
    if args.write_results:
        write_results(rows, ratios, argv if argv is not None else sys.argv[1:])
    torch.distributed.destroy_process_group()
    return 0


SECTION = "## Training throughput against transformers' xLSTM and Mistral (issue 15)"


def write_results(rows, ratios, argv) -> None:
    path = REPO / "bench" / "RESULTS.md"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    import transformers

    lines = [SECTION, "",
             f"{now}; {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, transformers "
             f"{transformers.__version__}, {rows[0]['threads']} thread(s); load average {load} (shared machine: "
             f"min over interleaved repeats).  ",
             f"Command: `python bench/train_peers_cpu.py {' '.join(argv)}`. One step: fwd + bwd + clip + AdamW, "
             f"fp32, 1 x {rows[0]['seq']} tokens; peers matched in parameters by their MLP width.", "",
             "| size | model | params | step s (min) | step s (median) | tokens/s | matmul share |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['model']} | {r['params']:,} | {r['step_s_min']:.3f} | "
                     f"{r['step_s_median']:.3f} | {r['tokens_per_s']:,.0f} | {100 * r['matmul_share']:.0f}% |")
    lines += ["", "| size | ratio | value | goal | ceiling (peer step / SWAX matmul time) |", "|---|---|---|---|---|"]
    for r in ratios:
        lines.append(f"| {r['size']} | {r['ratio']} | {r['value']:.2f} | >= {r['goal']} | {r['ceiling']:.2f} |")
    replace_section(path, SECTION, lines)


if __name__ == "__main__":
    sys.exit(main())
