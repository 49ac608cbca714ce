"""Checkpoint policy: where an attempt starts from, and when it saves.

    start = find_start(resolved, root, use_dist_opt)   # nothing, own `latest` or checkpoint.load
    saver = Checkpointer(manager, recipe.checkpoint, start, extra, log)
    saver.after_step(step, final=..., stop_reason=..., time_due=...)   # saves when one is due

The mechanism (sharded save/load, manifest, `latest`) is checkpoint.py; this module decides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, Optional

from .checkpoint import (MANIFEST, CheckpointError, CheckpointManager, TrainState,
                         list_checkpoints, read_latest, resolve_load_path, step_of, verify)


@dataclasses.dataclass
class Start:
    """Where this attempt starts: nothing, its own checkpoint, or checkpoint.load."""

    path: Optional[Path] = None
    common: Optional[Dict[str, Any]] = None  # the checkpoint's common entries
    own: bool = False  # this run's own checkpoint (resume), else checkpoint.load
    weights_only: bool = False  # checkpoint.finetune: weights only, step 0, fresh optimizer
    note: Optional[str] = None  # what the log should say about the choice

    @property
    def state(self) -> TrainState:
        if self.common is None or self.weights_only:
            return TrainState()
        return TrainState(**self.common["train_state"])

    @property
    def initialised_from(self) -> Optional[str]:
        """The checkpoint.load this run started from (recorded in every checkpoint it writes)."""
        if self.own:
            return self.common.get("initialised_from")
        return str(self.path) if self.path is not None else None

    def describe(self) -> str:
        if self.own:
            state = self.state
            return (f"resumed from {self.path} at step {state.step} "
                    f"({state.consumed_samples} samples consumed)")
        if self.weights_only:
            return (f"initialised from the weights of {self.path} (checkpoint.finetune): step 0, "
                    f"fresh optimizer")
        if self.path is not None:
            return f"continuing {self.path} (checkpoint.load) at step {self.state.step}"
        return "starting from scratch"


def find_start(resolved, root: Path, use_distributed_optimizer: bool) -> Start:
    """The checkpoint this attempt starts from, verified against its manifest (collective).

    The run's own `latest` wins over checkpoint.load: the load was applied when the run started,
    and the run's checkpoints carry it on. Directories of saves that never completed (killed
    while writing, e.g. with an asynchronous save in flight) are named in the note, never
    loaded."""
    start = _find_start(resolved, root, use_distributed_optimizer)
    partial = incomplete_checkpoints(root)
    if partial:
        line = (f"ignoring incomplete checkpoint(s) {', '.join(p.name for p in partial)} in "
                f"{root} (saves that never finished: no {MANIFEST}); the next save of that "
                f"step replaces one, pruning removes those older than `latest`")
        start.note = f"{start.note}\n{line}" if start.note else line
    return start


def incomplete_checkpoints(root: Path) -> list:
    return [p for p in list_checkpoints(root) if not (p / MANIFEST).is_file()]


def _find_start(resolved, root: Path, use_distributed_optimizer: bool) -> Start:
    ck = resolved.recipe.checkpoint
    own = read_latest(root)
    if own is not None:
        verify(own)
        common = CheckpointManager.read_common(own)
        check_same_experiment(common, own, resolved)
        start = Start(own, common, own=True)
        if ck.load:
            start.note = (f"checkpoint.load={ck.load}: applied when this run started (from "
                          f"{common.get('initialised_from')}); resuming the run's own "
                          f"checkpoint {own}")
    elif ck.load:
        path = resolve_load_path(ck.load)
        verify(path)
        start = Start(path, CheckpointManager.read_common(path), weights_only=ck.finetune)
        if start.common.get("weights_only") and not ck.finetune:
            raise CheckpointError(f"{path}: holds weights only (e.g. imported from Hugging Face), "
                                  f"no optimizer state or step: set checkpoint.finetune=true")
        if ck.finetune:
            return start  # no optimizer state is read: its format does not matter
    else:
        return Start()
    if start.common.get("use_distributed_optimizer") != use_distributed_optimizer:
        raise CheckpointError(f"{start.path}: written with parallel.use_distributed_optimizer="
                              f"{start.common.get('use_distributed_optimizer')}, this run uses "
                              f"{use_distributed_optimizer}; the optimizer state formats differ")
    return start


def check_same_experiment(common: Dict[str, Any], path: Path, resolved) -> None:
    """A run resumes only its own checkpoints: same config hash, or an error naming the keys."""
    from ..config.resolve import hash_diff

    theirs = common.get("config_hash")
    if theirs == resolved.config_hash:
        return
    diff = hash_diff(common.get("recipe") or {}, resolved.recipe)
    shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
    raise CheckpointError(
        f"{path}: written by another experiment (config hash {str(theirs)[:8]}, this recipe "
        f"{resolved.config_hash[:8]}): {shown or 'recipe not recorded'}; to start from its "
        f"weights use checkpoint.load (with a checkpoint.dir of this run's own)")


def continue_warnings(common: Dict[str, Any], window_state: Dict[str, Any],
                      lr_state: Dict[str, Any]) -> list:
    """What differs when checkpoint.load continues another run's state under this recipe."""
    problems = []
    if common.get("window_schedule") != window_state:
        problems.append(f"window schedule differs: checkpoint {common.get('window_schedule')}, "
                        f"recipe {window_state}")
    if common.get("lr_schedule") != lr_state:
        problems.append(f"LR schedule differs: checkpoint {common.get('lr_schedule')}, recipe "
                        f"{lr_state}")
    return problems


class Checkpointer:
    """Decides when to save: the last step, a stop request, every `every_steps` steps, or when
    `every_minutes` have passed (the clock is read here, agreed over the ranks by the caller).

    With checkpoint.async_save a save completes in the background: each step boundary finalizes
    a save whose writers have finished everywhere (logged then, with the reason it was started);
    the last step and a stop request wait for theirs, and finalize() (called by every exit of
    the job) waits for any still in flight."""

    def __init__(self, manager: CheckpointManager, config, start: Start, extra: Dict[str, Any],
                 log, fault=None, weights_ready=None):
        self.manager, self.config, self.extra, self.log, self.fault = (
            manager, config, extra, log, fault)
        # Context under which every rank's weights are whole (engine.gathered_params: with the
        # overlapped parameter gather an update reaches other ranks' shards in the next forward).
        self.weights_ready = weights_ready or contextlib.nullcontext
        self.last_path: Optional[Path] = start.path  # the newest complete checkpoint
        self._saved_step = start.state.step if start.own else None
        self._saved_at = time.monotonic()
        self._reasons: Dict[Path, str] = {}  # saves started and not yet completed

    def time_due(self) -> bool:
        """This rank's clock says a time-based save is due (the caller agrees on it)."""
        minutes = self.config.every_minutes
        return minutes is not None and time.monotonic() - self._saved_at >= minutes * 60

    def after_step(self, step: int, model, optimizer, state: TrainState, *, final: bool,
                   stop_reason: Optional[str], time_due: bool) -> None:
        self._collect(blocking=False)
        if final:
            reason = "final"
        elif stop_reason is not None:
            reason = stop_reason
        elif self.config.every_steps and step % self.config.every_steps == 0:
            reason = "every_steps"
        elif time_due:
            reason = "every_minutes"
        else:
            return
        if self._saved_step == step:
            self._collect(blocking=final or stop_reason is not None)
            return
        with self.weights_ready():
            path, why_not = self.manager.save(step, model, optimizer, state, self.extra)
        self._saved_at = time.monotonic()
        if path is None:
            self._collect(blocking=False)  # a save still in flight was finalized by save()
            self.log.message(f"step {step}: no checkpoint written ({reason}): {why_not}")
            return
        self._saved_step = step
        self._reasons[path] = reason
        # The job ends after these: they are complete before anything else happens.
        self._collect(blocking=final or stop_reason is not None)

    def finalize(self) -> None:
        """Wait for a save in flight and complete it (every exit of a job calls this first)."""
        self._collect(blocking=True)

    def _collect(self, blocking: bool) -> None:
        for path in self.manager.finalize(blocking=blocking):
            self.log.checkpoint({"step": step_of(path), "path": str(path),
                                 "reason": self._reasons.pop(path, "?")})
            self.last_path = path
            if self.fault is not None:
                self.fault.at_point("after_save", step_of(path))
