"""The evaluation tasks a recipe's `eval.tasks` may name, and how each is run: plain Python (no
torch, no tokenizer), so the recipe validator can ask without importing a model."""

from __future__ import annotations

from .niah import VARIANTS as _NIAH_VARIANTS

PPL_TASK = "ppl_by_position"
GENERATION_TASKS = tuple(f"niah_{v}" for v in _NIAH_VARIANTS)  # greedy decoding, string match
# teacher forced: one forward per sample (synth_*: the reproduction's token-level documents)
PROBE_TASKS = ("passkey", "mqar", "synth_mqar", "synth_passkey")
EVAL_TASKS = GENERATION_TASKS + PROBE_TASKS + (PPL_TASK,)


def task_kind(name: str) -> str:
    """"generation", "probes" or "ppl_by_position" (the results file's `kind`)."""
    if name in GENERATION_TASKS:
        return "generation"
    if name in PROBE_TASKS:
        return "probes"
    if name == PPL_TASK:
        return "ppl_by_position"
    raise ValueError(f"unknown evaluation task {name!r}; expected one of {', '.join(EVAL_TASKS)}")
