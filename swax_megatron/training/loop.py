"""The pretraining run: set-up, the step loop, the end of a job.

    code = run(resolve("recipes/tiny/swax.yaml", ["train.steps=50"]))

`run` reads like the job: lock the run directory, prepare (every check passes before anything
of an earlier attempt is replaced), step until done or stopped, finish. Who acts when is decided
by the parts themselves: the Checkpointer (checkpointer.py) when to save, the Validator
(validator.py) when to evaluate, the RunLogger (metrics.py) when to print.

Every rank runs the same code and takes every decision from the same numbers: the window and LR
are functions of the step, and whatever differs between ranks (a signal received, wall-clock
time) is agreed on through one small all-reduce at each step boundary before anyone acts on it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .batches import BatchLayout, cross_entropy, entropy, microbatches, perplexity, token_counts
from .checkpoint import CheckpointManager, TrainState
from .checkpointer import Checkpointer, Start, continue_warnings, find_start
from .faults import FaultPlan
from .flops import ModelDims, mfu, train_flops_per_token
from .lr_schedule import LRSchedule, current_lr, load_scheduler_state, scheduler
from .metrics import NullLogger, RunLogger, format_summary, plot_losses, write_summary
from .rundir import RunDirError, RunLock
from ..exit_codes import EXIT_DIVERGED, EXIT_OK, EXIT_REQUEUE
from .signals import StopRequest
from .validator import Validator
from .window_schedule import WindowSchedule


class TrainingDiverged(RuntimeError):
    pass


def run(resolved) -> int:
    """Train `resolved` (config.resolve.Resolved) in an initialised process group; returns the
    exit code (signals.EXIT_*)."""
    stop = StopRequest()  # from the first moment: Ctrl-C in set-up is a stop request too
    lock = None
    try:
        lock = _lock_run_dir(resolved)
        job = _prepare(resolved, lock)
        try:
            stop_reason = "signal" if agree_flags(stop.local)[0] else None  # during set-up
            while job.state.step < job.recipe.train.steps and stop_reason is None:
                job.step()
                step = job.state.step
                job.validator.after_step(step)
                signal_, save_due, exit_due = agree_flags(
                    stop.local, job.checkpointer.time_due(), job.exit_time_due())
                stop_reason = "signal" if signal_ else "exit_after_minutes" if exit_due else None
                job.checkpointer.after_step(step, job.engine.model, job.engine.optimizer,
                                            job.state, final=step == job.recipe.train.steps,
                                            stop_reason=stop_reason, time_due=save_due)
        except TrainingDiverged as e:
            return job.finish(EXIT_DIVERGED, str(e))
        if stop_reason is not None:
            why = (stop.name or "a signal to another rank") if stop_reason == "signal" \
                else "train.exit_after_minutes"
            job.log.message(f"stop requested ({why}) at step {job.state.step}: exiting with code "
                            f"{EXIT_REQUEUE} (requeue); resume from "
                            f"{job.checkpointer.last_path or 'scratch'}")
            return job.finish(EXIT_REQUEUE, "stop requested")
        return job.finish_training()
    finally:
        stop.restore()
        if lock is not None:
            lock.release()


def agree_flags(*local: bool) -> list:
    """Any rank's flag is every rank's flag (MAX all-reduce): a signal may reach one rank only,
    and clocks cross a deadline at slightly different moments on each rank."""
    buf = torch.tensor([float(x) for x in local],
                       device="cuda" if torch.cuda.is_available() else "cpu")
    torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.MAX)
    return [x > 0 for x in buf.tolist()]


def _rank0() -> bool:
    return torch.distributed.get_rank() == 0


def _lock_run_dir(resolved) -> Optional[RunLock]:
    """Rank 0 takes the run's lock (creating the run directory); every rank raises its error."""
    lock, error = None, None
    if _rank0():
        try:
            lock = RunLock.acquire([Path(resolved.run_dir), Path(resolved.checkpoint_dir)])
        except RunDirError as e:
            error = e
    box = [error]
    torch.distributed.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise box[0]
    return lock


# --- set-up --------------------------------------------------------------------------------------

def _prepare(resolved, lock: Optional[RunLock]) -> "Job":
    """Every check, then the job. Nothing of an earlier attempt (resolved.yaml, exit.json,
    metrics.jsonl, checkpoints) is replaced before all checks have passed, and a first attempt
    that fails one leaves no run directory behind."""
    from megatron.core import parallel_state as ps

    from ..config.errors import RecipeError
    from ..data import datasets_from_config, tokenizer_from_config
    from .engine import build_engine

    t_job = time.monotonic()
    recipe = resolved.recipe
    tr, ck = recipe.train, recipe.checkpoint
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")
    try:
        window = WindowSchedule.from_config(tr.window_schedule, seed=recipe.run.seed,
                                            total_steps=tr.steps)
        lr_schedule = LRSchedule.from_recipe(recipe)
        fault = FaultPlan.from_env()
        manager = CheckpointManager(Path(resolved.checkpoint_dir), keep_last=ck.keep_last,
                                    fault=fault, async_save=ck.async_save,
                                    fully_parallel=ck.fully_parallel)
        start = find_start(resolved, manager.root, recipe.parallel.use_distributed_optimizer)
        state = start.state
        cache_dir = Path(recipe.data.cache_dir) if recipe.data.cache_dir \
            else Path(recipe.run.output_root) / ".cache"
        tokenizer = tokenizer_from_config(recipe.data, cache_dir)
        vocab = recipe.model.vocab_size
        if vocab is not None and vocab < tokenizer.vocab_size:
            raise RecipeError(f"model.vocab_size {vocab} is smaller than the tokenizer's "
                              f"vocabulary of {tokenizer.vocab_size} pieces (token ids would index "
                              f"past the embedding): set it >= {tokenizer.vocab_size}, or null")
        gbs = tr.global_batch_size
        n_train = state.consumed_samples + max(0, tr.steps - state.step) * gbs
        datasets = datasets_from_config(recipe.data, tokenizer, seq_length=tr.seq_length,
                                        seed=recipe.run.seed,
                                        num_samples=[n_train, tr.eval_iters * gbs, 0],
                                        cache_dir=cache_dir, progress=_rank0())
        engine = build_engine(recipe, tokenizer.vocab_size, device)
        if start.path is not None:
            manager.load(start.path, engine.model, engine.optimizer,
                         weights_only=start.weights_only)
    except BaseException:
        if lock is not None:
            lock.release(remove_new=True)
        raise
    layout = BatchLayout(tr.micro_batch_size, gbs, ps.get_data_parallel_world_size(),
                         ps.get_data_parallel_rank())
    return Job(resolved, engine, datasets, layout, window, lr_schedule, start, manager, fault,
               device, n_train, t_job, tokenizer=tokenizer)


class Job:
    """One attempt at a run, from a passed set-up to its exit code."""

    def __init__(self, resolved, engine, datasets, layout, window: WindowSchedule,
                 lr_schedule: LRSchedule, start: Start, manager: CheckpointManager, fault,
                 device, n_train: int, t_job: float, tokenizer=None):
        from megatron.core import parallel_state as ps

        from ..config.resolve import write_resolved
        from .engine import dtype_name, gathered_params

        self.resolved, self.recipe = resolved, resolved.recipe
        self.engine, self.datasets, self.layout = engine, datasets, layout
        self.window, self.lr_schedule, self.fault, self.device = window, lr_schedule, fault, device
        self.state: TrainState = start.state
        self.n_train, self.t_job = n_train, t_job
        self.run_dir = Path(resolved.run_dir)
        self.world = torch.distributed.get_world_size()
        self.has_swa = "S" in engine.config.layer_symbols  # else the window changes nothing
        self.dims, self.dtype = ModelDims.from_config(engine.config), dtype_name(engine.config)
        self.device_name = torch.cuda.get_device_name() if device.type == "cuda" else None
        self.tokens = self.flops = 0
        self.train_seconds = 0.0
        tr = self.recipe.train

        # This attempt owns the run directory from here on.
        _log0(start.describe())
        if start.note:
            _log0(start.note)
        if start.path is not None and not start.own and not start.weights_only:
            for p in continue_warnings(start.common, window.state_dict(),
                                       dataclasses.asdict(lr_schedule)):
                _log0(f"warning: checkpoint.load from another run: {p}")
        if _rank0():
            write_resolved(resolved)
            self._write_exit(None, "running", start.path)
        self.log = RunLogger(self.run_dir, total_steps=tr.steps, start_step=self.state.step,
                             log_every=tr.log_every, attempt_info={
                                 "resumed_from": str(start.path) if start.path else None,
                                 "host": socket.gethostname(), "world_size": self.world,
                                 "slurm_job": os.environ.get("SLURM_JOB_ID")}
                             ) if _rank0() else NullLogger()
        self.lr_scheduler = self._lr_scheduler(lr_schedule, start)
        extra = {"window_schedule": window.state_dict(),
                 "lr_schedule": dataclasses.asdict(lr_schedule),
                 "lr_scheduler": self.lr_scheduler.state_dict(),
                 "recipe_yaml": resolved.to_yaml(), "config_hash": resolved.config_hash,
                 "recipe": dataclasses.asdict(self.recipe),
                 "initialised_from": start.initialised_from,
                 "use_distributed_optimizer": self.recipe.parallel.use_distributed_optimizer}
        self.extra = extra  # the checkpoints' common entries (lr_scheduler updated each step)
        self.checkpointer = Checkpointer(manager, self.recipe.checkpoint, start, extra, self.log,
                                         fault, weights_ready=partial(gathered_params, engine))
        self.eval_window = self.recipe.model.swa.window  # the one rule: schema.SwaConfig
        self.validator = Validator(engine, datasets.valid, layout, tr, self.eval_window,
                                   self.has_swa, self.log, device, tokenizer=tokenizer,
                                   eval_config=self.recipe.eval)  # + the recall probe
        self.log.message(
            f"{resolved.run_name}: {self.recipe.model.layer_pattern} hidden "
            f"{self.recipe.model.hidden_size}, seq {tr.seq_length}, global batch "
            f"{tr.global_batch_size}, {self.world} process(es) (tp "
            f"{ps.get_tensor_model_parallel_world_size()}, pp "
            f"{ps.get_pipeline_model_parallel_world_size()}, "
            f"{'ulysses %d, ' % ps.get_context_parallel_world_size() if ps.get_context_parallel_world_size() > 1 else ''}"
            f"dp {ps.get_data_parallel_world_size()}), {self.dtype}, "
            f"{'window ' + window.describe() if self.has_swa else 'no sliding-window layers'}")
        self.log.message(f"set-up took {time.monotonic() - t_job:.1f} s; run directory "
                         f"{self.run_dir}")

    def _lr_scheduler(self, s: LRSchedule, start: Start):
        """megatron's OptimizerParamScheduler at this attempt's first step: the state of the
        run's own checkpoint, else the recipe's schedule at the start step (checkpoint.load
        continues another run's step under this recipe's schedule)."""
        sched = scheduler(s, self.engine.optimizer, 0, self.recipe.optim.weight_decay)
        saved = start.common.get("lr_scheduler") if start.own else None
        if saved is not None:
            load_scheduler_state(sched, saved, self.state.step)
            return sched
        sched.step(self.state.step)
        if start.own:
            _log0(f"note: {start.path} holds no LR scheduler state (written before megatron's "
                  f"OptimizerParamScheduler set the LR): the schedule continues at step "
                  f"{self.state.step} by its definition, after warmup one step ahead of the "
                  f"old decay (training/lr_schedule.py)")
        return sched

    def exit_time_due(self) -> bool:
        minutes = self.recipe.train.exit_after_minutes
        return minutes is not None and time.monotonic() - self.t_job >= minutes * 60

    def step(self) -> None:
        """One optimizer step at the step's window and LR; logs it; raises TrainingDiverged
        after train.max_consecutive_nonfinite NaN/Inf steps in a row."""
        from .engine import train_step

        tr, state = self.recipe.train, self.state
        t0 = time.monotonic()
        # The param groups hold this step's LR and weight decay (the scheduler set them).
        w, lr = self.window.window(state.step), current_lr(self.lr_scheduler)
        batches = microbatches(self.datasets.train, self.layout, state.consumed_samples,
                               self.device)
        res = train_step(self.engine, batches, window=w)
        self.lr_scheduler.step(1)  # every step, skipped or not: lr_schedule.py says why
        self.extra["lr_scheduler"] = self.lr_scheduler.state_dict()
        dt = time.monotonic() - t0
        state.step += 1
        state.consumed_samples += tr.global_batch_size
        if res.updated:
            state.consecutive_nonfinite = 0
        else:
            state.skipped_steps += 1
            state.consecutive_nonfinite += res.skip_reason == "nonfinite"
        tokens = tr.global_batch_size * tr.seq_length
        flops_per_token = train_flops_per_token(self.dims, tr.seq_length, w)
        self.tokens, self.train_seconds = self.tokens + tokens, self.train_seconds + dt
        self.flops += flops_per_token * tokens
        step = state.step
        self.log.train({"step": step, "loss": res.loss, "lr": lr,
                        "window": w if self.has_swa else None, "grad_norm": res.grad_norm,
                        "tokens_per_s": tokens / dt, "step_time_s": dt,
                        "skipped": not res.updated, "consumed_samples": state.consumed_samples,
                        "flops_per_token": flops_per_token,
                        "mfu": mfu(tokens / dt, flops_per_token, self.world, self.device_name,
                                   self.dtype)})
        if res.skip_reason == "overflow":
            self.log.message(f"step {step}: fp16 loss-scale overflow: update skipped")
        elif not res.updated:
            n = state.consecutive_nonfinite
            self.log.message(f"step {step}: NaN/Inf (loss {res.loss}, grad norm {res.grad_norm}):"
                             f" update skipped ({n} in a row)")
            if n >= tr.max_consecutive_nonfinite:
                raise TrainingDiverged(
                    f"training diverged: {n} consecutive steps with a NaN/Inf loss or gradient "
                    f"norm (steps {step - n + 1}..{step}; train.max_consecutive_nonfinite="
                    f"{tr.max_consecutive_nonfinite}); last checkpoint: "
                    f"{self.checkpointer.last_path or 'none'}")
        if self.fault is not None:
            self.fault.at_point("step", step)

    def finish_training(self) -> int:
        """The final evaluation and summary. A run ends as done only on finite evidence: a NaN
        final evaluation or skipped last steps mean the weights are not what the run claims."""
        val_loss = self.validator.run(self.state.step)
        failure = None
        if val_loss is not None and not math.isfinite(val_loss):
            failure = f"the final evaluation is not finite (val loss {val_loss})"
        elif self.state.consecutive_nonfinite:
            failure = (f"the last {self.state.consecutive_nonfinite} step(s) had a NaN/Inf loss "
                       f"or gradient norm and were skipped")
        if _rank0():
            summary = self._summary(val_loss)
            write_summary(self.run_dir / "summary.json", summary)
            note = plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png",
                               {"unigram entropy (valid)": summary["unigram_entropy_valid"]}
                               if "unigram_entropy_valid" in summary else None)
            if note:
                print(f"note: {note}", file=sys.stderr)
            self.log.close()
            print(format_summary(summary), flush=True)
        if failure is not None:
            return self.finish(EXIT_DIVERGED, f"{failure}: not done")
        return self.finish(EXIT_OK, "done")

    def finish(self, code: int, reason: str) -> int:
        """Complete a checkpoint save still in flight, close the logs and write exit.json;
        errors also go to stderr as one line."""
        self.checkpointer.finalize()
        self.log.close()
        if _rank0():
            self._write_exit(code, reason, self.checkpointer.last_path)
            if code not in (EXIT_OK, EXIT_REQUEUE):
                print(f"swax-train: error: {reason}", file=sys.stderr, flush=True)
        torch.distributed.barrier()
        return code

    def _write_exit(self, code: Optional[int], reason: str, checkpoint) -> None:
        """exit.json: how this job ended, for launchers that cannot see the workers' exit code
        (torchrun reports every worker failure as 1; slurm/pretrain.sh reads this)."""
        write_summary(self.run_dir / "exit.json", {
            "code": code, "step": self.state.step, "reason": reason,
            "checkpoint": str(checkpoint) if checkpoint else None})

    def _summary(self, val_loss: Optional[float]) -> Dict[str, Any]:
        tr, state, datasets = self.recipe.train, self.state, self.datasets
        baselines = {}
        if self.validator.batches is not None:
            vocab = self.engine.config.vocab_size
            valid_counts = token_counts(datasets.valid, range(tr.eval_iters *
                                                              tr.global_batch_size), vocab)
            train_counts = token_counts(datasets.train, range(min(self.n_train, 4096)), vocab)
            baselines = {"unigram_entropy_valid": entropy(valid_counts),
                         "unigram_xent_train": cross_entropy(valid_counts, train_counts)}
        tps = self.tokens / self.train_seconds if self.train_seconds > 0 else None
        fpt = self.flops / self.tokens if self.tokens else None  # mean over this job's windows
        last = self.checkpointer.last_path
        return {
            "run_dir": str(self.run_dir), "config_hash": self.resolved.config_hash,
            "steps": state.step, "skipped_steps": state.skipped_steps,
            "tokens_trained": state.consumed_samples * tr.seq_length,
            "val_loss": val_loss, "val_ppl": None if val_loss is None else perplexity(val_loss),
            "eval_window": self.eval_window if self.has_swa else None, **baselines,
            "tokens_per_s": tps, "world_size": self.world, "train_flops_per_token": fpt,
            "mfu": None if tps is None else mfu(tps, fpt, self.world, self.device_name,
                                                self.dtype),
            "wall_seconds": time.monotonic() - self.t_job,
            "checkpoint": str(last) if last else None,
            "device": self.device_name or "cpu", "dtype": self.dtype,
        }


def _log0(text: str) -> None:
    if _rank0():
        print(text, file=sys.stderr, flush=True)
