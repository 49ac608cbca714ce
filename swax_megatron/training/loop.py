"""The pretraining run: set-up, auto-resume, the step loop, checkpoints, stop requests, summary.

    code = run(resolve("recipes/tiny/swax.yaml", ["train.steps=50"]))

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
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .batches import BatchLayout, cross_entropy, entropy, microbatches, perplexity, token_counts
from .checkpoint import (CheckpointError, CheckpointManager, TrainState, read_latest,
                         resolve_load_path, verify)
from .faults import FaultPlan
from .flops import ModelDims, mfu, train_flops_per_token
from .lr_schedule import LRSchedule, lr_at
from .metrics import NullLogger, RunLogger, format_summary, plot_losses, write_summary
from .rundir import RunDirError, RunLock
from .signals import EXIT_DIVERGED, EXIT_OK, EXIT_REQUEUE, StopRequest
from .window_schedule import WindowSchedule

_F_SIGNAL, _F_SAVE_TIME, _F_EXIT_TIME = 0, 1, 2  # positions in agree_flags()


class TrainingDiverged(RuntimeError):
    pass


def _rank0() -> bool:
    return torch.distributed.get_rank() == 0


def _log0(text: str) -> None:
    if _rank0():
        print(text, file=sys.stderr, flush=True)


def _write_exit(run_dir: Path, code: int, step: int, reason: str, checkpoint) -> None:
    """exit.json: how this job ended, for launchers that cannot see the workers' exit code
    (torchrun reports every worker failure as 1; slurm/pretrain.sh in torchrun mode reads this)."""
    write_summary(run_dir / "exit.json", {"code": code, "step": step, "reason": reason,
                                          "checkpoint": str(checkpoint) if checkpoint else None})


def agree_flags(*local: bool) -> list:
    """Any rank's flag is every rank's flag (MAX all-reduce): a signal may reach one rank only,
    and clocks cross a deadline at slightly different moments on each rank."""
    buf = torch.tensor([float(x) for x in local],
                       device="cuda" if torch.cuda.is_available() else "cpu")
    torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.MAX)
    return [x > 0 for x in buf.tolist()]


def _check_continue_compatible(common: Dict[str, Any], path: Path, window: WindowSchedule,
                              lr: LRSchedule) -> list:
    """What differs between another run's checkpoint and this run (warnings: checkpoint.load
    continues that run's state under this recipe)."""
    problems = []
    if common.get("window_schedule") != window.state_dict():
        problems.append(f"window schedule differs: checkpoint {common.get('window_schedule')}, "
                        f"recipe {window.state_dict()}")
    if common.get("lr_schedule") != dataclasses.asdict(lr):
        problems.append(f"LR schedule differs: checkpoint {common.get('lr_schedule')}, recipe "
                        f"{dataclasses.asdict(lr)}")
    return problems


def _check_same_experiment(common: Dict[str, Any], path: Path, resolved) -> None:
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


def _check_optimizer_format(common: Dict[str, Any], path: Path, use_dist_opt: bool) -> None:
    if common.get("use_distributed_optimizer") != use_dist_opt:
        raise CheckpointError(f"{path}: written with parallel.use_distributed_optimizer="
                              f"{common.get('use_distributed_optimizer')}, this run uses "
                              f"{use_dist_opt}; the optimizer state formats differ")


@dataclasses.dataclass
class _Start:
    """Where this attempt starts: nothing, its own checkpoint, or checkpoint.load."""

    path: Optional[Path] = None
    common: Optional[Dict[str, Any]] = None
    own: bool = False  # this run's own checkpoint (resume), else checkpoint.load
    weights_only: bool = False  # checkpoint.finetune: weights only, step 0, fresh optimizer

    @property
    def state(self) -> TrainState:
        if self.common is None or self.weights_only:
            return TrainState()
        return TrainState(**self.common["train_state"])


def _find_start(resolved, ckpt_root: Path) -> _Start:
    """The checkpoint this attempt starts from, verified against its manifest (collective)."""
    ck = resolved.recipe.checkpoint
    own = read_latest(ckpt_root)
    if own is not None:
        verify(own)
        common = CheckpointManager.read_common(own)
        _check_same_experiment(common, own, resolved)
        if ck.load:
            _log0(f"checkpoint.load={ck.load}: applied when this run started (from "
                  f"{common.get('initialised_from')}); resuming the run's own checkpoint {own}")
        return _Start(own, common, own=True)
    if ck.load:
        path = resolve_load_path(ck.load)
        verify(path)
        return _Start(path, CheckpointManager.read_common(path), weights_only=ck.finetune)
    return _Start()


def _from_rank0(error: Optional[BaseException]) -> None:
    """Raise rank 0's set-up error on every rank (only rank 0 touches the run directory)."""
    box = [error]
    torch.distributed.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise box[0]


def run(resolved) -> int:
    """Train `resolved` (config.resolve.Resolved) in an initialised process group; returns the
    exit code (signals.EXIT_*)."""
    # From the first moment: a Ctrl-C / SIGTERM during set-up is a stop request, not a traceback.
    stop = StopRequest()
    lock = None
    try:
        error = None
        if _rank0():
            try:
                lock = RunLock.acquire([Path(resolved.run_dir), _checkpoint_root(resolved)])
            except RunDirError as e:
                error = e
        _from_rank0(error)
        return _run(resolved, stop, lock)
    finally:
        stop.restore()
        if lock is not None:
            lock.release()


def _checkpoint_root(resolved) -> Path:
    ck = resolved.recipe.checkpoint
    return Path(ck.dir) if ck.dir else Path(resolved.run_dir) / "checkpoints"


def _run(resolved, stop: StopRequest, lock) -> int:
    from megatron.core import parallel_state as ps

    from ..config.errors import RecipeError
    from ..config.resolve import write_resolved
    from ..data import datasets_from_config, tokenizer_from_config

    t_job = time.monotonic()
    recipe = resolved.recipe
    tr, ck = recipe.train, recipe.checkpoint
    rank = torch.distributed.get_rank()
    world = torch.distributed.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")
    run_dir = Path(resolved.run_dir)

    # --- checks: nothing of an earlier attempt is replaced until all of them pass -------------------
    try:
        window = WindowSchedule.from_config(tr.window_schedule, seed=recipe.run.seed,
                                            total_steps=tr.steps)
        lr_schedule = LRSchedule.from_recipe(recipe)
        fault = FaultPlan.from_env()
        ckpt_root = _checkpoint_root(resolved)
        manager = CheckpointManager(ckpt_root, keep_last=ck.keep_last, fault=fault)
        start = _find_start(resolved, ckpt_root)
        if start.common is not None:
            _check_optimizer_format(start.common, start.path,
                                    recipe.parallel.use_distributed_optimizer)
        state = start.state
        # --- data ------------------------------------------------------------------------------
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
        n_valid = tr.eval_iters * gbs
        datasets = datasets_from_config(recipe.data, tokenizer, seq_length=tr.seq_length,
                                        seed=recipe.run.seed, num_samples=[n_train, n_valid, 0],
                                        cache_dir=cache_dir, progress=rank == 0)
        layout = BatchLayout(tr.micro_batch_size, gbs, ps.get_data_parallel_world_size(),
                             ps.get_data_parallel_rank())

        # --- model, optimizer, checkpoint ------------------------------------------------------
        from .engine import build_engine, dtype_name, evaluate, train_step

        engine = build_engine(recipe, tokenizer.vocab_size, device)
        if start.path is not None:
            manager.load(start.path, engine.model, engine.optimizer,
                         weights_only=start.weights_only)
    except BaseException:
        if lock is not None:  # a first attempt that failed its checks leaves no run directory
            lock.release(remove_new=True)
        raise

    # --- this attempt owns the run directory from here on -------------------------------------------
    if start.own:
        _log0(f"resumed from {start.path} at step {state.step} "
              f"({state.consumed_samples} samples consumed)")
    elif start.weights_only:
        _log0(f"initialised from the weights of {start.path} (checkpoint.finetune): step 0, "
              f"fresh optimizer")
    elif start.path is not None:
        _log0(f"continuing {start.path} (checkpoint.load) at step {state.step}")
        for p in _check_continue_compatible(start.common, start.path, window, lr_schedule):
            _log0(f"warning: checkpoint.load from another run: {p}")
    initialised_from = (start.common.get("initialised_from") if start.own
                        else str(start.path) if start.path is not None else None)
    if rank == 0:
        write_resolved(resolved)
        _write_exit(run_dir, None, state.step, "running", start.path)
    has_swa = "S" in engine.config.layer_symbols  # else the window changes nothing
    eval_window = recipe.model.swa.window if recipe.eval.window is None else recipe.eval.window
    dims = ModelDims.from_config(engine.config)
    dtype = dtype_name(engine.config)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else None
    tokens_per_step = gbs * tr.seq_length
    extra = {"window_schedule": window.state_dict(), "lr_schedule": dataclasses.asdict(lr_schedule),
             "recipe_yaml": resolved.to_yaml(), "config_hash": resolved.config_hash,
             "recipe": dataclasses.asdict(recipe), "initialised_from": initialised_from,
             "use_distributed_optimizer": recipe.parallel.use_distributed_optimizer}

    log = RunLogger(run_dir, total_steps=tr.steps, start_step=state.step, log_every=tr.log_every,
                    attempt_info={"resumed_from": str(start.path) if start.path else None,
                                  "host": socket.gethostname(), "world_size": world,
                                  "slurm_job": os.environ.get("SLURM_JOB_ID")}
                    ) if rank == 0 else NullLogger()
    log.message(f"{resolved.run_name}: {recipe.model.layer_pattern} hidden "
                f"{recipe.model.hidden_size}, seq {tr.seq_length}, global batch {gbs}, "
                f"{world} process(es) (tp {ps.get_tensor_model_parallel_world_size()}, pp "
                f"{ps.get_pipeline_model_parallel_world_size()}, dp "
                f"{ps.get_data_parallel_world_size()}), {dtype}, "
                f"{'window ' + window.describe() if has_swa else 'no sliding-window layers'}")

    valid_batches = None
    if datasets.valid is not None:
        valid_batches = [microbatches(datasets.valid, layout, i * gbs, device)
                         for i in range(tr.eval_iters)]

    def run_eval(step: int) -> Optional[float]:
        if valid_batches is None:
            return None
        val = evaluate(engine, valid_batches, window=eval_window)
        log.eval({"step": step, "val_loss": val, "val_ppl": perplexity(val),
                  "window": eval_window if has_swa else None})
        return val

    def save(step: int, reason: str) -> Optional[Path]:
        path, why_not = manager.save(step, engine.model, engine.optimizer, state, extra)
        if path is None:
            log.message(f"step {step}: no checkpoint written ({reason}): {why_not}")
        else:
            log.checkpoint({"step": step, "path": str(path), "reason": reason})
        return path

    log.message(f"set-up took {time.monotonic() - t_job:.1f} s; run directory {run_dir}")

    # --- the loop ----------------------------------------------------------------------------------
    last_save_time = time.monotonic()
    last_saved_step = state.step if start.own else None
    val_loss, exit_code, job_tokens, job_flops, job_train_time = None, EXIT_OK, 0, 0.0, 0.0
    last_path = start.path
    if agree_flags(stop.local)[0]:  # stopped during set-up: nothing new to save
        log.message(f"stop requested ({stop.name or 'a signal to another rank'}) before the first "
                    f"step: exiting with code {EXIT_REQUEUE}; resume from {last_path or 'scratch'}")
        exit_code = EXIT_REQUEUE
    try:
        while state.step < tr.steps and exit_code != EXIT_REQUEUE:
            s = state.step
            t0 = time.monotonic()
            w = window.window(s)
            lr = lr_at(s, lr_schedule)
            batches = microbatches(datasets.train, layout, state.consumed_samples, device)
            res = train_step(engine, batches, window=w, lr=lr,
                             weight_decay=recipe.optim.weight_decay)
            dt = time.monotonic() - t0
            state.step += 1
            state.consumed_samples += gbs
            job_tokens += tokens_per_step
            job_train_time += dt
            if res.updated:
                state.consecutive_nonfinite = 0
            else:
                state.skipped_steps += 1
                if res.skip_reason == "nonfinite":
                    state.consecutive_nonfinite += 1
            step = state.step
            tps = tokens_per_step / dt
            fpt = train_flops_per_token(dims, tr.seq_length, w)
            job_flops += fpt * tokens_per_step
            record = {"step": step, "loss": res.loss, "lr": lr, "window": w if has_swa else None,
                      "grad_norm": res.grad_norm, "tokens_per_s": tps, "step_time_s": dt,
                      "skipped": not res.updated, "consumed_samples": state.consumed_samples,
                      "flops_per_token": fpt, "mfu": mfu(tps, fpt, world, device_name, dtype)}
            log.train(record)
            if res.skip_reason == "overflow":
                log.message(f"step {step}: fp16 loss-scale overflow: update skipped")
            elif not res.updated:
                log.message(f"step {step}: NaN/Inf (loss {res.loss}, grad norm {res.grad_norm}):"
                            f" update skipped ({state.consecutive_nonfinite} in a row)")
                if state.consecutive_nonfinite >= tr.max_consecutive_nonfinite:
                    raise TrainingDiverged(
                        f"training diverged: {state.consecutive_nonfinite} consecutive steps with "
                        f"a NaN/Inf loss or gradient norm (steps {step - state.consecutive_nonfinite + 1}"
                        f"..{step}; train.max_consecutive_nonfinite={tr.max_consecutive_nonfinite});"
                        f" last checkpoint: {last_path or 'none'}")
            if fault is not None:
                fault.at_point("step", step)
            if tr.eval_every and step % tr.eval_every == 0 and step < tr.steps:
                val_loss = run_eval(step)

            flags = agree_flags(stop.local, ck.every_minutes is not None and
                                time.monotonic() - last_save_time >= ck.every_minutes * 60,
                                tr.exit_after_minutes is not None and
                                time.monotonic() - t_job >= tr.exit_after_minutes * 60)
            stop_requested = flags[_F_SIGNAL] or flags[_F_EXIT_TIME]
            reason = None
            if step == tr.steps:
                reason = "final"
            elif stop_requested:
                reason = "signal" if flags[_F_SIGNAL] else "exit_after_minutes"
            elif ck.every_steps and step % ck.every_steps == 0:
                reason = "every_steps"
            elif flags[_F_SAVE_TIME]:
                reason = "every_minutes"
            if reason is not None and last_saved_step != step:
                path = save(step, reason)
                last_save_time = time.monotonic()
                if path is not None:
                    last_path, last_saved_step = path, step
                    if fault is not None:
                        fault.at_point("after_save", step)
            if stop_requested and step < tr.steps:
                why = (stop.name or "a signal to another rank") if flags[_F_SIGNAL] \
                    else "train.exit_after_minutes"
                log.message(f"stop requested ({why}) at step {step}: exiting with code "
                            f"{EXIT_REQUEUE} (requeue); resume from {last_path or 'scratch'}")
                exit_code = EXIT_REQUEUE
                break
    except TrainingDiverged as e:
        log.close()
        if _rank0():
            _write_exit(run_dir, EXIT_DIVERGED, state.step, str(e), last_path)
            print(f"swax-train: error: {e}", file=sys.stderr, flush=True)
        return EXIT_DIVERGED

    if exit_code == EXIT_REQUEUE:
        log.close()
        if _rank0():
            _write_exit(run_dir, EXIT_REQUEUE, state.step, "stop requested", last_path)
        return exit_code

    # --- summary -------------------------------------------------------------------------------------
    val_loss = run_eval(state.step)
    # A run ends as done only on finite evidence: a NaN final evaluation (e.g. weights loaded
    # from a damaged file) or skipped last steps mean the weights are not what the run claims.
    failure = None
    if val_loss is not None and not math.isfinite(val_loss):
        failure = f"the final evaluation is not finite (val loss {val_loss})"
    elif state.consecutive_nonfinite:
        failure = (f"the last {state.consecutive_nonfinite} step(s) had a NaN/Inf loss or "
                   f"gradient norm and were skipped")
    code = EXIT_OK if failure is None else EXIT_DIVERGED
    summary = None
    if rank == 0:
        baselines = {}
        if valid_batches is not None:
            vocab = engine.config.vocab_size
            valid_counts = token_counts(datasets.valid, range(n_valid), vocab)
            train_counts = token_counts(datasets.train, range(min(n_train, 4096)), vocab)
            baselines = {"unigram_entropy_valid": entropy(valid_counts),
                         "unigram_xent_train": cross_entropy(valid_counts, train_counts)}
        tps = job_tokens / job_train_time if job_train_time > 0 else None
        fpt = job_flops / job_tokens if job_tokens else None  # mean over this job's windows
        summary = {
            "run_dir": str(run_dir), "config_hash": resolved.config_hash, "steps": state.step,
            "skipped_steps": state.skipped_steps,
            "tokens_trained": state.consumed_samples * tr.seq_length,
            "val_loss": val_loss, "val_ppl": None if val_loss is None else perplexity(val_loss),
            "eval_window": eval_window if has_swa else None, **baselines,
            "tokens_per_s": tps, "world_size": world,
            "train_flops_per_token": fpt,
            "mfu": None if tps is None else mfu(tps, fpt, world, device_name, dtype),
            "wall_seconds": time.monotonic() - t_job,
            "checkpoint": str(last_path) if last_path else None,
            "device": device_name or "cpu", "dtype": dtype,
        }
        write_summary(run_dir / "summary.json", summary)
        note = plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png",
                           {"unigram entropy (valid)": baselines["unigram_entropy_valid"]}
                           if baselines else None)
        log.close()
        if note:
            print(f"note: {note}", file=sys.stderr)
        print(format_summary(summary), flush=True)
        _write_exit(run_dir, code, state.step, "done" if failure is None else failure, last_path)
        if failure is not None:
            print(f"swax-train: error: {failure}: not done", file=sys.stderr, flush=True)
    torch.distributed.barrier()
    return code
