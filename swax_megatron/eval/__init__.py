"""Evaluation tasks: RULER needle-in-a-haystack and synthetic recall (passkey, MQAR), as pure,
deterministic sample generators with scorers, plus result aggregation and plots.

    from swax_megatron.eval import get_task, accuracy_grid, save_heatmap
    task = get_task("niah_single_1")                     # or "passkey", "mqar", ...
    for sample in task.grid(tokenizer, lengths=[1024, 4096], num_samples=4, seed=0):
        text = generate(sample.prompt_ids, max_new_tokens=sample.gen_tokens)   # the harness
        records.append(task.record(sample, text))
    grid = accuracy_grid(records); save_heatmap(grid, "heatmap.png")

Teacher-forced alternative (recall tasks, probes during training):
    records += task.score_probes(sample, model(sample.ids).argmax(-1))

Training documents for the recall tasks: `training_documents(get_task("mqar"), tokenizer,
count=10_000, length=seq_length)` (strings; `write_jsonl` for the preprocessing tool).

This package imports the data package (tokenizer, embedded corpus) and nothing of the models or
training: the model-running harness builds on it.
"""

from __future__ import annotations

from .niah import VARIANTS as NIAH_VARIANTS
from .niah import NiahTask
from .recall import MQARTask, PasskeyTask, SynthRecallTask, training_documents, write_jsonl
from .results import (accuracy_grid, distance_buckets, save_distance_plot, save_heatmap,
                      write_json)
from .tasks import (DEFAULT_DEPTHS, Probe, Sample, Task, oracle_argmax, string_match_all,
                    string_match_part)

TASK_NAMES = tuple(f"niah_{v}" for v in NIAH_VARIANTS) + ("passkey", "mqar", "synth_mqar",
                                                            "synth_passkey")


def get_task(name: str, **settings) -> Task:
    """A task by name: niah_<variant> (single_1..3, multikey_1..3, multivalue, multiquery),
    passkey, mqar, synth_mqar or synth_passkey (the reproduction's token-level documents,
    swax_megatron.data.recall_data); `settings` are the task class' keyword arguments."""
    if name.startswith("niah_") and name[len("niah_"):] in NIAH_VARIANTS:
        return NiahTask(name[len("niah_"):], **settings)
    if name == "passkey":
        return PasskeyTask(**settings)
    if name == "mqar":
        return MQARTask(**settings)
    if name in ("synth_mqar", "synth_passkey"):
        return SynthRecallTask(name[len("synth_"):], **settings)
    raise ValueError(f"unknown evaluation task {name!r}; expected one of {', '.join(TASK_NAMES)}")


__all__ = [
    "DEFAULT_DEPTHS", "MQARTask", "NIAH_VARIANTS", "NiahTask", "PasskeyTask", "Probe", "Sample",
    "SynthRecallTask", "TASK_NAMES", "Task", "accuracy_grid", "distance_buckets", "get_task",
    "oracle_argmax", "save_distance_plot", "save_heatmap", "string_match_all", "string_match_part",
    "training_documents", "write_json", "write_jsonl",
]
