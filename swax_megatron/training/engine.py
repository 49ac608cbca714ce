"""Model, DDP and optimizer set-up; one training step; evaluation. Megatron-core throughout:

    DistributedDataParallel(config, DistributedDataParallelConfig, model)
    get_megatron_optimizer(OptimizerConfig, [ddp])     (distributed optimizer optional)
    get_forward_backward_func()(...)                    (pipeline schedule for PP > 1)

A step: set the step's window on this rank's stage -> forward/backward over the micro-batches
-> one all-reduce of the loss sums -> main grads -> grad norm. A NaN/Inf loss
or grad norm skips the update: gradients are dropped and neither the weights nor the optimizer
state (Adam moments, its step count) change. Otherwise clip to optim.clip_grad and update.

Overlapped communication (parallel.overlap_grad_reduce / overlap_param_gather; `overlap`):
megatron DDP reduces each gradient bucket as soon as its last gradient is ready in the last
micro-batch's backward, and finishes every reduction in finalize_model_grads, inside the
schedule, so a step's gradients are complete (and nothing is in flight) before the NaN/Inf check
reads them. With the distributed optimizer, an update writes only this rank's shard of the
weights; the other shards arrive in the next forward (DDP's forward pre-hooks gather bucket by
bucket). Whatever reads the weights outside a forward (a checkpoint save) first takes
`gathered_params` (Megatron-LM's training loop disables the pre-hooks, a synchronous gather,
around its saves); evaluation is a forward and gathers through the hooks. A skipped update
changes no weights, so the next forward's gather of the unchanged shards is a no-op.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Optional, Tuple

import torch


@dataclass
class Engine:
    model: torch.nn.Module  # bare SwaxModel of this rank's stage (checkpoints, windows)
    ddp: torch.nn.Module  # what the schedule runs: DDP(Float16Module?(model))
    optimizer: object  # megatron optimizer (ChainedOptimizer)
    config: object  # the SwaxConfig
    seq_length: int
    micro_batch_size: int
    device: torch.device


def dtype_name(config) -> str:
    return "bf16" if config.bf16 else "fp16" if config.fp16 else "fp32"


def overlap(parallel) -> Tuple[bool, bool]:
    """(overlap_grad_reduce, overlap_param_gather) in effect: the one home of the rule. The
    parameter gather exists only with the distributed optimizer (without it every rank updates
    whole weights), so there overlap_param_gather is off whatever the recipe says; the reduce
    overlaps at every layout. Results equal the non-overlapped run bitwise, except with the
    distributed optimizer at DP > 1 and several buckets (models over megatron's 40M parameters
    per bucket): the optimizer shards each bucket, so the gradient norm sums in another order,
    equal to round-off (tests/training/test_overlap.py)."""
    return (bool(parallel.overlap_grad_reduce),
            bool(parallel.overlap_param_gather and parallel.use_distributed_optimizer))


def build_engine(recipe, vocab_size: int, device: torch.device, *,
                 bucket_size: Optional[int] = None) -> Engine:
    """bucket_size: parameters per DDP bucket (None: megatron's default, 40M: one bucket for
    small models); tests set it small so the overlap runs over several buckets."""
    from megatron.core.distributed import (DistributedDataParallel,
                                           DistributedDataParallelConfig, finalize_model_grads)
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.transformer.module import Float16Module

    from ..models.model import swax_model_from_recipe

    model = swax_model_from_recipe(recipe, vocab_size=vocab_size)
    config = model.config
    if device.type == "cuda":
        model.cuda(torch.cuda.current_device())
    wrapped = Float16Module(config, model) if (config.bf16 or config.fp16) else model
    use_dist_opt = recipe.parallel.use_distributed_optimizer
    overlap_grad_reduce, overlap_param_gather = overlap(recipe.parallel)
    ddp = DistributedDataParallel(
        config=config,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=overlap_grad_reduce,
            overlap_param_gather=overlap_param_gather, use_distributed_optimizer=use_dist_opt,
            bucket_size=bucket_size,
            check_for_nan_in_grad=False),  # NaN steps are skipped, not raised
        module=wrapped)
    o = recipe.optim
    opt_config = OptimizerConfig(
        optimizer="adam" if o.optimizer == "adamw" else "sgd",
        lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.beta1, adam_beta2=o.beta2, adam_eps=o.eps, clip_grad=o.clip_grad,
        bf16=config.bf16, fp16=config.fp16, params_dtype=config.params_dtype,
        use_distributed_optimizer=use_dist_opt)
    optimizer = get_megatron_optimizer(opt_config, [ddp])
    # Hooks megatron's schedules call (as Megatron-LM's training.setup does).
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = ddp.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    if overlap_grad_reduce:
        # As Megatron-LM (align_grad_reduce): with PP, stages after the first launch their
        # reductions once their last backward is done, in the pipeline bubble.
        config.grad_sync_func = ddp.start_grad_sync
    return Engine(model=model, ddp=ddp, optimizer=optimizer, config=config,
                  seq_length=recipe.train.seq_length,
                  micro_batch_size=recipe.train.micro_batch_size, device=device)


@contextlib.contextmanager
def gathered_params(e: Engine):
    """Every rank's weights whole for the duration (collective): with overlap_param_gather the
    other ranks' shards of the last update are otherwise only gathered by the next forward.
    Megatron-LM's disable/enable_forward_pre_hook; a no-op without the overlap."""
    if not getattr(e.ddp, "use_forward_hook", False):
        yield
        return
    e.ddp.disable_forward_pre_hook(param_sync=True)
    try:
        yield
    finally:
        e.ddp.enable_forward_pre_hook()


# --- loss -------------------------------------------------------------------------------------

def _loss_func(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    mask = loss_mask.reshape(-1).float()
    loss_sum = (per_token_loss.reshape(-1).float() * mask).sum()
    num_tokens = mask.sum().to(torch.int)
    # Megatron divides the first value in place by num_tokens and the micro-batch count (a mean);
    # the third, copied before that, is what the schedule hands back per micro-batch.
    return loss_sum, num_tokens, (loss_sum.detach().clone(), num_tokens.detach().clone())


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    out = model(batch["tokens"], labels=batch["labels"])
    return out, partial(_loss_func, batch["loss_mask"])


def _run_schedule(e: Engine, batches: List[Dict[str, torch.Tensor]], forward_only: bool):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    return get_forward_backward_func()(
        forward_step_func=_forward_step, data_iterator=iter(batches), model=[e.ddp],
        num_microbatches=len(batches), seq_length=e.seq_length,
        micro_batch_size=e.micro_batch_size, decoder_seq_length=e.seq_length,
        forward_only=forward_only)


def _is_reporter() -> bool:
    # One rank per data-parallel replica contributes its loss sums: the last stage, TP rank 0.
    from megatron.core import parallel_state as ps

    return ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0


def _reduce(e: Engine, outputs) -> List[float]:
    """World all-reduce (sum) of [loss sum, tokens] over the reporting rank of each replica."""
    loss_sum, tokens = 0.0, 0.0
    if _is_reporter():
        for ls, n in outputs:
            loss_sum += float(ls)
            tokens += float(n)
    buf = torch.tensor([loss_sum, tokens], dtype=torch.float64, device=e.device)
    torch.distributed.all_reduce(buf)
    return buf.tolist()


# --- step ---------------------------------------------------------------------------------------

@dataclass
class StepResult:
    loss: float
    grad_norm: Optional[float]
    updated: bool
    # Why the update was skipped: "nonfinite" (NaN/Inf loss or grad norm: counts towards
    # train.max_consecutive_nonfinite) or "overflow" (fp16 loss-scale overflow with a finite
    # loss: the scaler backs off, as Megatron does; not a sign of divergence).
    skip_reason: Optional[str] = None


def set_lr(optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_mult", 1.0)


def _clip(optimizer, grad_norm: float) -> None:
    # Looked up at call time: cpu_compat.apply() replaces it on CPU.
    from megatron.core.optimizer import optimizer as mopt

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if getattr(opt, "is_stub_optimizer", False) or opt.config.clip_grad <= 0:
            continue
        params = opt.get_parameters()
        if params:
            mopt.clip_grad_by_total_norm_fp32(
                params, max_norm=opt.config.clip_grad, total_norm=grad_norm,
                use_decoupled_grad=opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)


def train_step(e: Engine, batches, *, window: int, lr: Optional[float] = None,
               weight_decay: Optional[float] = None) -> StepResult:
    """One step at SWA window `window`. The LR and weight decay are the optimizer's param
    groups' (the training loop's OptimizerParamScheduler sets them), or `lr` / `weight_decay`
    (times each group's multipliers) when given, both."""
    e.model.set_swa_window(window)
    e.ddp.train()
    e.ddp.zero_grad_buffer()
    e.optimizer.zero_grad()
    outputs = _run_schedule(e, batches, forward_only=False)
    loss_sum, tokens = _reduce(e, outputs)
    loss = loss_sum / tokens if tokens else float("nan")
    if (lr is None) != (weight_decay is None):
        raise ValueError("train_step: give lr and weight_decay together, or neither")
    if lr is not None:
        set_lr(e.optimizer, lr, weight_decay)
    found_inf = e.optimizer.prepare_grads()  # fp16 loss-scale overflow; False otherwise
    # Computed over the grad-stats group on every rank, so all ranks agree on it.
    grad_norm = float(e.optimizer.get_grad_norm())
    if found_inf or not math.isfinite(loss) or not math.isfinite(grad_norm):
        e.optimizer.zero_grad()
        e.ddp.zero_grad_buffer()
        reason = "overflow" if found_inf and math.isfinite(loss) else "nonfinite"
        return StepResult(loss, grad_norm, False, reason)
    _clip(e.optimizer, grad_norm)
    e.optimizer.step_with_ready_grads()
    return StepResult(loss, grad_norm, True)


@torch.no_grad()
def evaluate(e: Engine, batches_per_iter, *, window: int) -> float:
    """Mean per-token loss over the given global batches, at SWA window `window`."""
    previous = e.model.swa_window
    e.model.set_swa_window(window)
    e.ddp.eval()
    loss_sum, tokens = 0.0, 0.0
    try:
        for batches in batches_per_iter:
            outputs = _run_schedule(e, batches, forward_only=True)
            ls, n = _reduce(e, outputs)
            loss_sum += ls
            tokens += n
    finally:
        e.model.set_swa_window(previous)
        e.ddp.train()
    return loss_sum / tokens if tokens else float("nan")
