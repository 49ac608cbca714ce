"""`swax generate`: a quick look at what a model writes, streamed token by token.

    swax generate runs/tiny-swax-1a2b3c4d --prompt "To be, or not" [--max-new-tokens 64]
    swax generate hf/tiny-swax --prompt "To be" --window 128 --temperature 0.8 --seed 1

A Hugging Face export directory (config.json) loads through the registered classes; a run
directory or checkpoint is converted in memory (fp32; convert.load_for_generation), nothing is
written. Greedy unless --temperature > 0. An empty prompt starts from the end-of-document token,
as every training document after the first does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, TextIO


def load_model(path: str, *, window: Optional[int] = None, step: Optional[int] = None):
    """(model, tokenizer, description) of an export directory or a run directory / checkpoint."""
    from .weights import ConversionError

    p = Path(path)
    if (p / "config.json").is_file():
        # model_type "swax" is registered: this module is part of swax_megatron.hf.
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if step is not None:
            raise ConversionError(f"{p}: --step applies to run directories and checkpoints, not to an export")
        overrides = {} if window is None else {"sliding_window": window}
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(p))
            model = AutoModelForCausalLM.from_pretrained(str(p), **overrides).eval()
        except (OSError, ValueError, KeyError) as e:
            text = str(e).strip().splitlines()
            raise ConversionError(f"{p}: cannot load the export ({text[0] if text else type(e).__name__})") from None
        return model, tokenizer, f"{p} (Hugging Face export)"
    from .convert import find_source, load_for_generation

    source = find_source(p, step)
    model, tokenizer = load_for_generation(p, step=step, window=window)
    return model, tokenizer, f"{source.checkpoint} (converted in memory)"


def generate(path: str, prompt: str, *, max_new_tokens: int = 64, window: Optional[int] = None,
             step: Optional[int] = None, temperature: float = 0.0, seed: int = 0,
             out: TextIO = sys.stdout) -> list:
    """Stream the continuation of `prompt` to `out`; returns the generated token ids."""
    import torch

    model, tokenizer, what = load_model(path, window=window, step=step)
    sliding = getattr(model.config, "sliding_window", None)
    print(f"swax: generating with {what}, window {sliding}", file=sys.stderr, flush=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if ids.shape[1] == 0:  # start a new document
        ids = torch.tensor([[model.generation_config.eos_token_id or tokenizer.eos_token_id]])
    streamer = _Streamer(tokenizer, out)
    options = dict(max_new_tokens=max_new_tokens, streamer=streamer, attention_mask=torch.ones_like(ids))
    if temperature > 0:
        torch.manual_seed(seed)
        options.update(do_sample=True, temperature=temperature)
    else:
        options.update(do_sample=False)
    with torch.no_grad():
        tokens = model.generate(ids, **options)
    return tokens[0, ids.shape[1]:].tolist()


class _Streamer:
    """transformers' TextStreamer writing to `out` (its own prints to stdout)."""

    def __new__(cls, tokenizer, out: TextIO):
        from transformers import TextStreamer

        class Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False):
                out.write(text + ("\n" if stream_end else ""))
                out.flush()

        return Streamer(tokenizer, skip_prompt=False, skip_special_tokens=True)


__all__ = ["generate", "load_model"]
