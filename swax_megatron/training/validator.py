"""Validation during training: decides when to evaluate, evaluates at the eval window, logs.

The validation micro-batches are read once (the same `train.eval_iters` global batches every
time), so every validation loss of a run is measured on the same tokens.

With the validation loss comes the recall probe (`RecallProbe`): `eval.probe_samples` fixed
samples of `eval.probe_task` (passkey or MQAR, swax_megatron/eval/recall.py) at the training
length, scored teacher forced (one forward per sample, the argmax at every position) at the same
window. It runs on the training model in its layout: every rank takes part in megatron's
forward-only schedule, the last stage takes the argmax of its vocab-parallel logits (one small
all-gather over the tensor-parallel group), and the scores of the data-parallel replicas (each
takes every dp-th sample) are summed over the world. It leaves training as it found it (model
mode, window, every RNG), so a run with the probe trains bitwise like one without.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import List, Optional

import numpy as np
import torch

from .batches import microbatches, perplexity


class Validator:
    def __init__(self, engine, valid_dataset, layout, train_config, window: int, has_swa: bool,
                 log, device, *, tokenizer=None, eval_config=None):
        from .engine import evaluate

        self._evaluate = evaluate
        self.engine, self.window, self.has_swa, self.log = engine, window, has_swa, log
        self.every, self.total = train_config.eval_every, train_config.steps
        gbs = train_config.global_batch_size
        self.batches = None if valid_dataset is None else [
            microbatches(valid_dataset, layout, i * gbs, device)
            for i in range(train_config.eval_iters)]
        self.probe = None
        if tokenizer is not None and eval_config is not None and eval_config.probe_samples:
            self.probe = RecallProbe.build(engine, tokenizer, eval_config,
                                           train_config.seq_length, layout, log)

    def after_step(self, step: int) -> None:
        """Evaluate every `train.eval_every` steps; the last step is evaluated by the summary."""
        if self.every and step % self.every == 0 and step < self.total:
            self.run(step)

    def run(self, step: int) -> Optional[float]:
        loss = None
        if self.batches is not None:
            loss = self._evaluate(self.engine, self.batches, window=self.window)
            self.log.eval({"step": step, "val_loss": loss, "val_ppl": perplexity(loss),
                           "window": self.window if self.has_swa else None})
        if self.probe is not None:
            result = self.probe.run(self.window)
            self.log.probe({"step": step, **result,
                            "window": self.window if self.has_swa else None})
        return loss


# --- the recall probe ---------------------------------------------------------------------------

@contextmanager
def preserved_rng():
    """Every random state a training step may read (Python, NumPy, torch CPU/CUDA, megatron's
    model-parallel tracker) is what it was before the block."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    tracker = None
    try:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        tracker = get_cuda_rng_tracker()
        tracker_states = tracker.get_states()
    except Exception:  # noqa: BLE001 - no tracker (no model-parallel set-up): nothing to keep
        tracker = None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if tracker is not None:
            tracker.set_states(tracker_states)


def probe_depths(n: int) -> List[float]:
    """n depths spread evenly over [0, 100] percent (50 for one sample)."""
    return [50.0] if n == 1 else [100.0 * i / (n - 1) for i in range(n)]


def probe_samples(task, tokenizer, count: int, length: int, seed: int) -> list:
    """The probe's fixed samples: index i of the task's eval stream at `length` tokens, at depth
    probe_depths(count)[i] for tasks that place by depth."""
    depths = probe_depths(count) if task.uses_depth else [None] * count
    return [task.sample(tokenizer, length=length, depth=d, seed=seed, index=i)
            for i, d in enumerate(depths)]


def vocab_parallel_argmax(logits: torch.Tensor, group=None) -> torch.Tensor:
    """torch.argmax(full_logits, -1) of logits split over the vocabulary across `group` (rank r
    holds columns [r * v, (r + 1) * v)): each rank's (max, argmax) is gathered, the largest max
    wins and ties go to the lowest rank, so the first maximal index wins as in torch.argmax."""
    x = logits.float()
    value, index = x.amax(dim=-1), x.argmax(dim=-1)  # argmax: the first maximal column
    size = torch.distributed.get_world_size(group) if group is not None else 1
    if size == 1:
        return index
    rank = torch.distributed.get_rank(group)
    index = index + rank * logits.shape[-1]
    values = [torch.empty_like(value) for _ in range(size)]
    indices = [torch.empty_like(index) for _ in range(size)]
    torch.distributed.all_gather(values, value.contiguous(), group=group)
    torch.distributed.all_gather(indices, index.contiguous(), group=group)
    best = torch.stack(values).argmax(dim=0, keepdim=True)  # first (lowest) rank among equals
    return torch.stack(indices).gather(0, best)[0]


def _argmax_func(logits: torch.Tensor, non_loss_data: bool = True) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    index = vocab_parallel_argmax(logits, ps.get_tensor_model_parallel_group())
    cp = ps.get_context_parallel_world_size()
    if cp > 1:  # Ulysses: each rank scored its share of the row; the whole row, in natural order
        from ..models.ulysses import natural_index

        parts = [torch.empty_like(index) for _ in range(cp)]
        torch.distributed.all_gather(parts, index.contiguous(), group=ps.get_context_parallel_group())
        gathered = torch.cat(parts, dim=1)
        index = gathered.index_select(1, natural_index(cp, gathered.shape[1], gathered.device))
    return index


def _probe_forward_step(data_iterator, model):
    from megatron.core.utils import get_batch_on_this_cp_rank

    tokens = get_batch_on_this_cp_rank({"tokens": next(data_iterator)})["tokens"]  # Ulysses: a share
    return model(tokens), _argmax_func


class RecallProbe:
    """The probe's samples as padded token rows of this data-parallel replica, and how to score
    them on the engine's model."""

    def __init__(self, engine, task, samples: list, rows: List[int], tokens: List[torch.Tensor],
                 length: int):
        self.engine, self.task, self.samples = engine, task, samples
        self.rows = rows  # indices into samples that this replica evaluates
        self.tokens = tokens  # [1, length] each: eod, the sample's ids, eod padding
        self.length = length

    @classmethod
    def build(cls, engine, tokenizer, eval_config, seq_length: int, layout, log):
        """The probe of a run, or None (with a note) when its task does not fit the training
        length. Samples are `seq_length - 1` tokens: with the end-of-document token in front
        (every training document but the first has one), a row is one training sequence."""
        from ..eval import get_task

        task = get_task(eval_config.probe_task)
        with preserved_rng():
            try:
                samples = probe_samples(task, tokenizer, eval_config.probe_samples,
                                        seq_length - 1, eval_config.seed)
            except ValueError as e:
                log.message(f"note: no recall probe: {eval_config.probe_task} does not fit in "
                            f"train.seq_length {seq_length} ({str(e).splitlines()[0]}); "
                            f"eval.probe_samples=0 silences this")
                return None
        eod = tokenizer.eod
        rows = list(range(layout.rank, len(samples), layout.dp))
        tokens = []
        for i in rows:
            ids = [eod, *samples[i].ids]
            ids += [eod] * (seq_length - len(ids))  # after the probes: changes none of their logits
            tokens.append(torch.tensor([ids], dtype=torch.long, device=engine.device))
        return cls(engine, task, samples, rows, tokens, seq_length)

    def argmax_rows(self) -> List[Optional[torch.Tensor]]:
        """The argmax at every position of each of this replica's rows ([length]); None on
        ranks other than the last pipeline stage."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        if not self.tokens:
            return []
        e = self.engine
        out = get_forward_backward_func()(
            forward_step_func=_probe_forward_step, data_iterator=iter(self.tokens), model=[e.ddp],
            num_microbatches=len(self.tokens), seq_length=self.length, micro_batch_size=1,
            decoder_seq_length=self.length, forward_only=True, collect_non_loss_data=True)
        if not out:
            return [None] * len(self.tokens)
        return [a[0] for a in out]

    @torch.no_grad()
    def run(self, window: int) -> dict:
        """Score the samples at `window`: {"task", "samples", "probes", "score" (percent of
        probes with every answer token right), "token_accuracy" (percent of answer tokens)}.
        Model mode, window and random states are restored."""
        from megatron.core import parallel_state as ps

        e = self.engine
        previous = e.model.swa_window
        e.model.set_swa_window(window)
        e.ddp.eval()
        try:
            with preserved_rng():
                argmaxes = self.argmax_rows()
        finally:
            e.model.set_swa_window(previous)
            e.ddp.train()
        hits, probes, token_acc = 0.0, 0.0, 0.0
        reporter = (ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
                    and ps.get_context_parallel_rank() == 0)  # Ulysses ranks hold the same rows
        if reporter:
            for i, argmax in zip(self.rows, argmaxes):
                # position t of the row is token t - 1 of the sample (the eod comes first)
                for r in self.task.score_probes(self.samples[i], argmax[1:].tolist()):
                    hits += r["score"]
                    token_acc += r["token_accuracy"]
                    probes += 1
        buf = torch.tensor([hits, probes, token_acc], dtype=torch.float64, device=e.device)
        torch.distributed.all_reduce(buf)  # one reporter per replica; replicas split the rows
        hits, probes, token_acc = buf.tolist()
        return {"task": self.task.name, "samples": len(self.samples), "probes": int(probes),
                "length": self.length,
                "score": 100.0 * hits / probes if probes else None,
                "token_accuracy": 100.0 * token_acc / probes if probes else None}
