"""Validation during training: decides when to evaluate, evaluates at the eval window, logs.

The validation micro-batches are read once (the same `train.eval_iters` global batches every
time), so every validation loss of a run is measured on the same tokens.
"""

from __future__ import annotations

from typing import Optional

from .batches import microbatches, perplexity


class Validator:
    def __init__(self, engine, valid_dataset, layout, train_config, window: int, has_swa: bool,
                 log, device):
        from .engine import evaluate

        self._evaluate = evaluate
        self.engine, self.window, self.has_swa, self.log = engine, window, has_swa, log
        self.every, self.total = train_config.eval_every, train_config.steps
        gbs = train_config.global_batch_size
        self.batches = None if valid_dataset is None else [
            microbatches(valid_dataset, layout, i * gbs, device)
            for i in range(train_config.eval_iters)]

    def after_step(self, step: int) -> None:
        """Evaluate every `train.eval_every` steps; the last step is evaluated by the summary."""
        if self.every and step % self.every == 0 and step < self.total:
            self.run(step)

    def run(self, step: int) -> Optional[float]:
        if self.batches is None:
            return None
        loss = self._evaluate(self.engine, self.batches, window=self.window)
        self.log.eval({"step": step, "val_loss": loss, "val_ppl": perplexity(loss),
                       "window": self.window if self.has_swa else None})
        return loss
