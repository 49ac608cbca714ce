"""Decode cost against context length (issue 12): prints one JSON object per line, rows then ratios.

    python bench/generate_cpu.py                  # contexts 1k ... 64k, plot in bench/out/
    python bench/generate_cpu.py --quick          # smoke run: contexts 1k and 2k, a few steps
    python bench/generate_cpu.py --threads 1 --steps 64 --contexts 1024 4096 65536

Two models of the Hugging Face port (swax_megatron/hf), random weights, fp32, batch 1, vocabulary 2048:

  swax  the tiny SWAX (recipes/tiny: hidden 128, layers mlstm / sliding_attention x 2 = "XS*2", window
        128, 4 query heads, 2 KV heads, 2 mLSTM heads, MLP 384, tied embeddings);
  twin  its full-attention twin: 4 full_attention layers, MLP width set so that the parameter count
        matches the SWAX (as bench/train_cpu.py does for the megatron models).

Each model lives in its own worker process (so each one's peak memory is its own); the parent drives
both in turns. For each context length L (ascending) both caches are extended to L tokens by chunked
prefill (`--prefill-chunk` tokens per forward, continuing the cache), then `--steps` greedy decode steps
(one token per forward with the cache, logits of that token only, argmax fed back) are timed one by one,
in rounds that alternate between the two models. Reported per model and L: the per-token time (min and
median over the steps), the cache size (SwaxCache.state_bytes), and the peak resident memory of the
worker during the decode steps (VmHWM, reset before them; the worker's weights, cache and Python/torch
runtime included, `rss_base_mib` is the worker before its first prefill); also the time and peak RSS of
the prefill that extended the cache from the previous L (`prefill_tokens` new tokens).

The twin stops at the first L whose estimated prefill memory exceeds `--mem-limit-gib` (default: 70% of
MemAvailable) or whose prefill fails (allocation error, worker killed); its rows then say so.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchutil import cpu_model, emit

REPO = Path(__file__).resolve().parents[1]
VOCAB = 2048
HIDDEN = 128
WINDOW = 128
SWAX_LAYERS = ["mlstm", "sliding_attention"] * 2  # XS*2
TWIN_LAYERS = ["full_attention"] * 4


def swax_config(layer_types=SWAX_LAYERS, intermediate_size=384, tie=True, window=WINDOW):
    """The tiny SWAX of recipes/tiny as a SwaxHFConfig (the hf package's own defaults otherwise)."""
    from swax_megatron.hf import SwaxHFConfig

    return SwaxHFConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=intermediate_size,
                        layer_types=list(layer_types), num_attention_heads=4, num_key_value_heads=2,
                        sliding_window=window, mlstm_num_heads=2, mlstm_qk_head_dim=32, mlstm_v_head_dim=64,
                        tie_word_embeddings=tie, pad_token_id=None, bos_token_id=None, eos_token_id=None)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def build(config, seed: int = 0):
    from swax_megatron.hf import SwaxForCausalLM

    torch.manual_seed(seed)
    return SwaxForCausalLM(config).eval()


def matched_intermediate(layer_types, target: int, tie=True) -> int:
    """MLP width of a model with `layer_types` whose parameter count is closest to `target` (linear in
    the width: two probes)."""
    p0 = n_params(build(swax_config(layer_types, 256, tie)))
    p1 = n_params(build(swax_config(layer_types, 320, tie)))
    return max(1, round(256 + (target - p0) * 64 / (p1 - p0)))


def model_configs():
    swax = swax_config()
    target = n_params(build(swax))
    twin = swax_config(TWIN_LAYERS, matched_intermediate(TWIN_LAYERS, target))
    return {"swax": swax, "twin": twin}


# ------------------------------------------------------------------------------------------------
# Memory of this process (Linux)
# ------------------------------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def reset_peak_rss() -> int:
    """Free what Python and glibc hold, reset VmHWM to the current RSS (clear_refs 5); return RSS KiB."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kib("VmRSS")


def mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def twin_prefill_bytes(L: int, chunk: int, config) -> int:
    """A generous estimate of the full-attention model's peak while prefilling up to L tokens: its
    cache at L, plus one query block's scores/probabilities/mask against L keys (x4 for temporaries)."""
    kv = len(config.layer_types) * L * (2 * config.num_key_value_heads * config.head_dim * 4 + 8)
    qb = min(chunk, 512)
    scores = 4 * qb * L * config.num_attention_heads * 4
    return kv + scores + (1 << 28)


# ------------------------------------------------------------------------------------------------
# Worker: one model, its cache, commands from the parent
# ------------------------------------------------------------------------------------------------

def worker(conn, name: str, config_dict: dict, threads: int, seed: int, prefill_chunk: int) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    from swax_megatron.hf import SwaxHFConfig

    model = build(SwaxHFConfig(**config_dict), seed)
    gen = torch.Generator().manual_seed(seed + 1)  # the same token stream for both models
    cache, ctx, last = None, 0, None
    conn.send({"params": n_params(model), "rss_base_kib": reset_peak_rss(),
               "threads": torch.get_num_threads()})
    with torch.inference_mode():
        while True:
            cmd, arg = conn.recv()
            if cmd == "stop":
                break
            try:
                if cmd == "prefill":  # extend the cache to `arg` tokens
                    reset_peak_rss()
                    start, t0 = ctx, time.perf_counter()
                    while ctx < arg:
                        n = min(prefill_chunk, arg - ctx)
                        ids = torch.randint(0, VOCAB, (1, n), generator=gen)
                        out = model(ids, cache=cache, use_cache=True, logits_to_keep=1)
                        cache, ctx = out.cache, ctx + n
                        last = out.logits[:, -1].argmax(-1, keepdim=True)
                        del out
                    conn.send({"ok": True, "prefill_s": time.perf_counter() - t0, "prefill_tokens": ctx - start,
                               "prefill_peak_rss_kib": _status_kib("VmHWM"), "context": ctx})
                elif cmd == "reset_peak":
                    conn.send({"ok": True, "rss_kib": reset_peak_rss()})
                elif cmd == "decode":  # `arg` greedy steps, each timed
                    times = []
                    for _ in range(arg):
                        t0 = time.perf_counter()
                        out = model(last, cache=cache, use_cache=True, logits_to_keep=1)
                        last = out.logits[:, -1].argmax(-1, keepdim=True)
                        times.append(time.perf_counter() - t0)
                        cache, ctx = out.cache, ctx + 1
                        del out
                    conn.send({"ok": True, "times": times, "context": ctx})
                elif cmd == "memory":
                    conn.send({"ok": True, "peak_rss_kib": _status_kib("VmHWM"), "rss_kib": _status_kib("VmRSS"),
                               "cache_bytes": sum(cache.state_bytes().values()) if cache is not None else 0,
                               "cache_by_kind": cache.state_bytes() if cache is not None else {}})
                else:
                    conn.send({"ok": False, "error": f"unknown command {cmd!r}"})
            except (RuntimeError, MemoryError) as e:  # an allocation failure: this model stops here
                cache = None
                gc.collect()
                conn.send({"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})


class Worker:
    def __init__(self, ctx, name, config, threads, seed, prefill_chunk):
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker, args=(child, name, config.to_dict(), threads, seed, prefill_chunk),
                                daemon=True)
        self.proc.start()
        child.close()
        self.info = self.conn.recv()
        self.alive, self.stopped_reason = True, None

    def call(self, cmd, arg=None) -> dict:
        try:
            self.conn.send((cmd, arg))
            reply = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self.proc.join(5)
            reply = {"ok": False, "error": f"worker exited (code {self.proc.exitcode}; killed for memory?)"}
        if not reply.get("ok"):
            self.alive, self.stopped_reason = False, reply["error"]
        return reply

    def close(self):
        if self.proc.is_alive():
            try:
                self.conn.send(("stop", None))
            except OSError:
                pass
            self.proc.join(30)


# ------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    p.add_argument("--steps", type=int, default=64, help="timed decode steps per model and context")
    p.add_argument("--rounds", type=int, default=8, help="the steps alternate between the models in this many rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed decode steps per model and context")
    p.add_argument("--prefill-chunk", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mem-limit-gib", type=float, default=None,
                   help="stop the twin where its estimated prefill peak exceeds this (default 70%% of MemAvailable)")
    p.add_argument("--plot", default=None, help="PNG path (default bench/out/generate_cpu[_quick].png)")
    p.add_argument("--quick", action="store_true", help="smoke run: contexts 1024 2048, 8 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.contexts, args.steps, args.rounds, args.warmup = [1024, 2048], 8, 2, 1
    contexts = sorted(set(args.contexts))
    plot = Path(args.plot) if args.plot else REPO / "bench" / "out" / (
        "generate_cpu_quick.png" if args.quick else "generate_cpu.png")
    mem_limit = (args.mem_limit_gib * 2**30 if args.mem_limit_gib else 0.7 * mem_available_bytes())

    configs = model_configs()
    ctx = mp.get_context("spawn")
    workers = {name: Worker(ctx, name, cfg, args.threads, args.seed, args.prefill_chunk)
               for name, cfg in configs.items()}
    started = datetime.datetime.now(datetime.timezone.utc)
    emit({"bench": "setup", "date": started.strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
          "cores": os.cpu_count(), "torch": torch.__version__, "transformers": _version("transformers"),
          "threads": args.threads, "load_avg": [round(x, 2) for x in os.getloadavg()],
          "models": {n: {"layer_types": c.layer_types, "intermediate_size": c.intermediate_size,
                         "sliding_window": c.sliding_window, "params": workers[n].info["params"]}
                     for n, c in configs.items()},
          "steps": args.steps, "prefill_chunk": args.prefill_chunk, "mem_limit_gib": round(mem_limit / 2**30, 1)})
    rows = []
    try:
        for L in contexts:
            live = {}
            for name, w in workers.items():
                if not w.alive:
                    continue
                if name == "twin" and twin_prefill_bytes(L, args.prefill_chunk, configs[name]) > mem_limit:
                    w.alive, w.stopped_reason = False, (
                        f"estimated prefill peak {twin_prefill_bytes(L, args.prefill_chunk, configs[name]) / 2**30:.1f}"
                        f" GiB > limit {mem_limit / 2**30:.1f} GiB")
                    continue
                r = w.call("prefill", L)
                if r.get("ok"):
                    live[name] = r
            for name, w in workers.items():
                if not w.alive and name not in live:
                    row = {"bench": "decode", "model": name, "context": L, "stopped": w.stopped_reason}
                    rows.append(row)
                    emit(row)
            if not live:
                break
            times = {n: [] for n in live}
            for n in live:
                workers[n].call("decode", args.warmup)
                workers[n].call("reset_peak")
            per_round = max(1, args.steps // args.rounds)
            names = list(live)
            for r in range(args.rounds):
                for n in (names if r % 2 == 0 else names[::-1]):
                    times[n] += workers[n].call("decode", per_round).get("times", [])
            for n in names:
                m = workers[n].call("memory")
                ts = times[n]
                row = {"bench": "decode", "model": n, "context": L, "steps": len(ts),
                       "per_token_ms_min": 1e3 * min(ts), "per_token_ms_median": 1e3 * statistics.median(ts),
                       "cache_mib": m["cache_bytes"] / 2**20,
                       "cache_mib_by_kind": {k: round(v / 2**20, 3) for k, v in m["cache_by_kind"].items()},
                       "peak_rss_mib": m["peak_rss_kib"] / 1024,
                       "rss_base_mib": workers[n].info["rss_base_kib"] / 1024,
                       "prefill_tokens": live[n]["prefill_tokens"], "prefill_s": live[n]["prefill_s"],
                       "prefill_peak_rss_mib": live[n]["prefill_peak_rss_kib"] / 1024, "threads": args.threads}
                rows.append(row)
                emit(row)
    finally:
        for w in workers.values():
            w.close()

    ratios = make_ratios(rows, contexts)
    for r in ratios:
        emit(r)
    draw(rows, plot, configs)
    emit({"plot": str(plot.relative_to(REPO) if plot.is_relative_to(REPO) else plot),
          "load_avg_end": [round(x, 2) for x in os.getloadavg()]})
    return 0


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


def make_ratios(rows, contexts):
    got = {(r["model"], r["context"]): r for r in rows if "per_token_ms_min" in r}
    lo = min(contexts)
    out = []
    for model in ("swax", "twin"):
        reached = [L for L in contexts if (model, L) in got]
        if lo not in reached or len(reached) < 2:
            continue
        hi = max(reached)
        t = got[(model, hi)]["per_token_ms_min"] / got[(model, lo)]["per_token_ms_min"]
        ratio = {"ratio": f"{model} per-token time {hi} / {lo}", "value": round(t, 3)}
        if model == "swax":
            ratio.update(goal="<= 1.2", met=t <= 1.2)
        out.append(ratio)
        out.append({"ratio": f"{model} cache memory {hi} / {lo}",
                    "value": round(got[(model, hi)]["cache_mib"] / got[(model, lo)]["cache_mib"], 3)})
    common = [L for L in contexts if ("swax", L) in got and ("twin", L) in got]
    for L in ([lo, max(common)] if common and max(common) != lo else common):
        out.append({"ratio": f"twin / swax per-token time at {L}",
                    "value": round(got[("twin", L)]["per_token_ms_min"] / got[("swax", L)]["per_token_ms_min"], 3)})
    return out


def draw(rows, path: Path, configs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = {"swax": f"SWAX (XS*2, window {configs['swax'].sliding_window})",
              "twin": "full-attention twin (G*4)"}
    for model, style, color in (("swax", "o-", "C0"), ("twin", "s--", "C3")):
        rs = [r for r in rows if r["model"] == model and "per_token_ms_min" in r]
        if not rs:
            continue
        x = [r["context"] for r in rs]
        a.plot(x, [r["per_token_ms_min"] for r in rs], style, color=color, label=labels[model] + " (min)")
        a.plot(x, [r["per_token_ms_median"] for r in rs], style, color=color, alpha=0.35,
               label=labels[model] + " (median)")
        b.plot(x, [r["cache_mib"] for r in rs], style, color=color, label=labels[model] + ": cache")
        b.plot(x, [r["peak_rss_mib"] - r["rss_base_mib"] for r in rs], style, color=color,
               alpha=0.35, label=labels[model] + ": peak RSS - base")
    for ax, title, unit in ((a, "decode time per token", "ms"), (b, "memory while decoding", "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    b.set_yscale("log")
    fig.suptitle(f"CPU decode, fp32, batch 1, {rows[0].get('threads', 1) if rows else 1} thread(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
