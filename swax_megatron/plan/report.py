"""`swax plan`: a recipe, a GPU count and a GPU -> the best layouts as a table, or JSON."""

from __future__ import annotations

import json
import re
from typing import List, Optional

from ..training import flops as flops_mod
from .layouts import Cluster, Layout, layout_problem, plan, planned_precision, train_flops_per_token, window_mix
from .model import Shape, model_parameters

GiB = float(1 << 30)
_UNITS = {"": 1e9, "g": 1e9, "gb": 1e9, "gib": GiB, "t": 1e12, "tb": 1e12, "tib": 1024 * GiB,
          "m": 1e6, "mb": 1e6, "mib": float(1 << 20)}


def parse_memory(text: str) -> float:
    """'80GB' (10^9 bytes), '141 GiB', '80' (GB) -> bytes; ValueError quoting the input."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"expected a memory size like 80GB or 141GiB, got {text!r}")
    return float(m.group(1)) * _UNITS[unit]


def default_gpu_flops(recipe) -> float:
    """H100 SXM's dense peak at the recipe's precision (training/flops.py's table)."""
    dtype = "fp32" if planned_precision(recipe) == "fp32" else "bf16"
    return flops_mod.peak_flops("h100", dtype)


def _b(n: float) -> str:
    """A count: 1.42B, 3.10M, 12.5K."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _gib(n: float) -> str:
    return f"{n / GiB:.1f}" if n >= 10 * GiB else f"{n / GiB:.2f}"


def summary(recipe, cluster: Cluster, layouts: List[Layout], top: int) -> dict:
    shape = Shape.from_recipe(recipe)
    t = recipe.train
    mix = window_mix(t.window_schedule)
    return {
        "recipe": {"name": recipe.run.name, "pattern": shape.pattern, "seq_length": t.seq_length,
                   "micro_batch_size": t.micro_batch_size, "global_batch_size": t.global_batch_size,
                   "steps": t.steps, "tokens": t.steps * t.global_batch_size * t.seq_length,
                   "precision": planned_precision(recipe), "windows": mix},
        "cluster": {"gpus": cluster.gpus, "gpu_memory": cluster.gpu_memory,
                    "gpu_flops": cluster.gpu_flops, "mfu": cluster.mfu,
                    "gpus_per_node": cluster.gpus_per_node, "usable_memory": cluster.usable},
        "parameters": model_parameters(shape),
        "train_flops_per_token": train_flops_per_token(shape, t.seq_length, mix),
        "valid_layouts": len(layouts),
        "fitting_layouts": sum(L.fits for L in layouts),
        "layouts": [L.as_dict() for L in (layouts if top <= 0 else layouts[:top])],
    }


def table(recipe, cluster: Cluster, layouts: List[Layout], top: int, label: str) -> str:
    s = summary(recipe, cluster, layouts, top)
    r, p, f = s["recipe"], s["parameters"], s["train_flops_per_token"]
    windows = " / ".join(f"{w} ({frac:.0%})" for w, frac in r["windows"].items())
    lines = [
        f"{label}: {r['name']} on {cluster.gpus} GPUs ({cluster.gpu_memory / 1e9:.0f} GB, "
        f"{cluster.gpu_flops / 1e12:.0f} TFLOP/s peak, MFU {cluster.mfu:.2f}, "
        f"{cluster.gpus_per_node} per node)",
        f"parameters {_b(p['total'])}: embedding {_b(p['embedding'])}, attention "
        f"{_b(p['attention'])}, mLSTM {_b(p['mlstm'])}, MLP {_b(p['mlp'])}, output {_b(p['output'])}",
        f"train FLOPs/token {sum(f.values()):.3g} (S {f['S']:.3g}, G {f['G']:.3g}, X {f['X']:.3g}, "
        f"MLP {f['mlp']:.3g}, output {f['output']:.3g}) at sequence {r['seq_length']}, "
        f"windows {windows}",
        f"batch {r['global_batch_size']} x {r['seq_length']} tokens (micro {r['micro_batch_size']}), "
        f"{r['steps']:,} steps = {_b(r['tokens'])} tokens, {r['precision']}",
        "",
    ]
    if not layouts:
        return "\n".join(lines + ["no valid layout"])
    head = ("  #  TP  PP   U    DP  micro  recompute   weights  grads  optim   acts  total GiB"
            "  no-DO GiB  bubble  tokens/day   days")
    lines.append(head)
    for i, L in enumerate(layouts[:top] if top > 0 else layouts, 1):
        m = {k: _gib(v) for k, v in L.memory.items()}
        acts = _gib(L.memory["activations"] + L.memory["transient"])
        fit = "" if L.fits else "  does not fit"
        lines.append(
            f"{i:3d} {L.tp:3d} {L.pp:3d} {L.ulysses:3d} {L.dp:5d} {L.microbatches:6d}  "
            f"{L.recompute:<10s} {m['weights']:>8s} {m['gradients']:>6s} {m['optimizer']:>6s} "
            f"{acts:>6s} {m['total']:>10s} {_gib(L.memory_without_distributed_optimizer):>10s}  "
            f"{L.bubble:6.1%}  "
            f"{_b(L.tokens_per_day):>10s} {L.days:6.3g}{fit}")
    lines += ["", f"{s['valid_layouts']} valid layouts, {s['fitting_layouts']} fit in "
              f"{cluster.usable:.0%} of {cluster.gpu_memory / 1e9:.0f} GB. Memory: the fullest "
              f"pipeline stage, with the distributed optimizer (no-DO: without it); sequence "
              f"parallelism on where TP > 1; acts: the in-flight microbatches' activations and "
              f"the backward pass's largest transient"]
    return "\n".join(lines)


def run(recipe, cluster: Cluster, *, top: int = 5, as_json: bool = False,
        label: Optional[str] = None) -> str:
    """The report; ValueError (one line) when no layout of the cluster is valid."""
    layouts = plan(recipe, cluster)
    if not layouts:
        why = layout_problem(recipe, Shape.from_recipe(recipe), 1, 1, 1, cluster)
        raise ValueError(f"no valid layout of {recipe.run.name} on {cluster.gpus} GPUs: "
                         f"{why or 'no split of the GPUs meets the rules (heads, sequence, stages, batch)'}")
    if as_json:
        return json.dumps(summary(recipe, cluster, layouts, top), indent=2, sort_keys=True)
    return table(recipe, cluster, layouts, top, label or "swax plan")
