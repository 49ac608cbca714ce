"""The pretraining run: set-up, auto-resume, the step loop, checkpoints, stop requests, summary.

    code = run(resolve("recipes/tiny/swax.yaml", ["train.steps=50"]))

Every rank runs the same code and takes every decision from the same numbers: the window and LR
are functions of the step, and whatever differs between ranks (a signal received, wall-clock
time) is agreed on through one small all-reduce at each step boundary before anyone acts on it.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .batches import BatchLayout, cross_entropy, entropy, microbatches, perplexity, token_counts
from .checkpoint import CheckpointError, CheckpointManager, TrainState, read_latest, resolve_load_path
from .faults import FaultPlan
from .flops import ModelDims, mfu, train_flops_per_token
from .lr_schedule import LRSchedule, lr_at
from .metrics import NullLogger, RunLogger, format_summary, plot_losses, write_summary
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


def _check_resume_compatible(common: Dict[str, Any], path: Path, window: WindowSchedule,
                             lr: LRSchedule, strict: bool, use_dist_opt: bool) -> list:
    """Problems between a checkpoint and this run (errors when resuming this very run)."""
    problems = []
    if common.get("window_schedule") != window.state_dict():
        problems.append(f"window schedule differs: checkpoint {common.get('window_schedule')}, "
                        f"recipe {window.state_dict()}")
    if common.get("lr_schedule") != dataclasses.asdict(lr):
        problems.append(f"LR schedule differs: checkpoint {common.get('lr_schedule')}, recipe "
                        f"{dataclasses.asdict(lr)}")
    if common.get("use_distributed_optimizer") != use_dist_opt:
        raise CheckpointError(f"{path}: written with parallel.use_distributed_optimizer="
                              f"{common.get('use_distributed_optimizer')}, this run uses "
                              f"{use_dist_opt}; the optimizer state formats differ")
    if strict and problems:
        raise CheckpointError(f"{path}: cannot resume: " + "; ".join(problems))
    return problems


def run(resolved) -> int:
    """Train `resolved` (config.resolve.Resolved) in an initialised process group; returns the
    exit code (signals.EXIT_*)."""
    from megatron.core import parallel_state as ps

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
    if rank == 0:
        write_resolved(resolved)
        (run_dir / "exit.json").unlink(missing_ok=True)  # written again when this job ends
    torch.distributed.barrier()

    window = WindowSchedule.from_config(tr.window_schedule, seed=recipe.run.seed,
                                        total_steps=tr.steps)
    lr_schedule = LRSchedule.from_recipe(recipe)
    fault = FaultPlan.from_env()

    # --- where to start from -------------------------------------------------------------------
    ckpt_root = Path(ck.dir) if ck.dir else run_dir / "checkpoints"
    manager = CheckpointManager(ckpt_root, keep_last=ck.keep_last, fault=fault)
    resume_path, strict = read_latest(ckpt_root), True
    if resume_path is None and ck.load:
        resume_path, strict = resolve_load_path(ck.load), False
    common = manager.read_common(resume_path) if resume_path is not None else None
    state = TrainState(**common["train_state"]) if common else TrainState()

    # --- data ------------------------------------------------------------------------------------
    cache_dir = Path(recipe.data.cache_dir) if recipe.data.cache_dir \
        else Path(recipe.run.output_root) / ".cache"
    tokenizer = tokenizer_from_config(recipe.data, cache_dir)
    gbs = tr.global_batch_size
    n_train = state.consumed_samples + max(0, tr.steps - state.step) * gbs
    n_valid = tr.eval_iters * gbs
    datasets = datasets_from_config(recipe.data, tokenizer, seq_length=tr.seq_length,
                                    seed=recipe.run.seed, num_samples=[n_train, n_valid, 0],
                                    cache_dir=cache_dir, progress=rank == 0)
    layout = BatchLayout(tr.micro_batch_size, gbs, ps.get_data_parallel_world_size(),
                         ps.get_data_parallel_rank())

    # --- model, optimizer, checkpoint ----------------------------------------------------------
    from .engine import build_engine, dtype_name, evaluate, train_step

    engine = build_engine(recipe, tokenizer.vocab_size, device)
    if resume_path is not None:
        problems = _check_resume_compatible(common, resume_path, window, lr_schedule, strict,
                                            recipe.parallel.use_distributed_optimizer)
        manager.load(resume_path, engine.model, engine.optimizer)
        _log0(f"resumed from {resume_path} at step {state.step} "
              f"({state.consumed_samples} samples consumed)")
        for p in problems:
            _log0(f"warning: checkpoint.load from another run: {p}")
    has_swa = "S" in engine.config.layer_symbols  # else the window changes nothing
    eval_window = recipe.eval.window or recipe.model.swa.window
    dims = ModelDims.from_config(engine.config)
    dtype = dtype_name(engine.config)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else None
    tokens_per_step = gbs * tr.seq_length
    extra = {"window_schedule": window.state_dict(), "lr_schedule": dataclasses.asdict(lr_schedule),
             "recipe_yaml": resolved.to_yaml(), "config_hash": resolved.config_hash,
             "use_distributed_optimizer": recipe.parallel.use_distributed_optimizer}

    log = RunLogger(run_dir, total_steps=tr.steps, start_step=state.step,
                    log_every=tr.log_every) if rank == 0 else NullLogger()
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
    stop = StopRequest()
    last_save_time = time.monotonic()
    last_saved_step = state.step if resume_path is not None and strict else None
    val_loss, exit_code, job_tokens, job_flops, job_train_time = None, EXIT_OK, 0, 0.0, 0.0
    last_path = resume_path
    try:
        while state.step < tr.steps:
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
    finally:
        stop.restore()

    if exit_code == EXIT_REQUEUE:
        log.close()
        if _rank0():
            _write_exit(run_dir, EXIT_REQUEUE, state.step, "stop requested", last_path)
        return exit_code

    # --- summary -------------------------------------------------------------------------------------
    val_loss = run_eval(state.step)
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
        _write_exit(run_dir, EXIT_OK, state.step, "done", last_path)
    torch.distributed.barrier()
    return EXIT_OK
