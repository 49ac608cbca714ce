#!/usr/bin/env python
"""Is a model's recurrent state the reason it fails past the training length? Loss by position
with each mLSTM layer's state reset every N tokens, beside the plain loss.

    python tools/state_reset_ppl.py RUN_DIR [--every N] [--window W] [--length L] [--sequences K]

The sequences are what `ppl_by_position` reads (the run's validation text as one token stream,
cut into L-token pieces). Each is fed N tokens at a time through the Hugging Face model's cache.
After every chunk the chosen mLSTM layers start again from a zero state; attention keeps its
window. Rows: no reset, each mLSTM layer alone, all of them. Columns: the loss (nats/token) over
positions [0, N), [N, 2N), [2N, L). The no-reset row is checked against one plain forward of
the whole sequence, so a broken cache cannot pass for a finding. Defaults: N =
train.seq_length, W = model.swa.window, L = eval.ppl_length_factor x N, K = eval.ppl_sequences.
"""

import json
import os
import sys
import warnings

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed")
warnings.filterwarnings("ignore", message=".*Apex is not installed")

# the chunked no-reset losses against one forward: fp32, same kernels, summation order differs
AGREE_ATOL = 1e-3


def chunked_losses(model, ids, every: int, reset: list):
    """Cross entropy [len(ids) - 1] of ids[t + 1] after ids[:t + 1], the sequence fed `every`
    tokens at a time through a SwaxCache; after each chunk the cache layers in `reset` (indices
    of mLSTM layers) are reset to a zero state."""
    import torch

    from swax_megatron.hf.cache_swax import SwaxCache

    x = torch.tensor([ids], dtype=torch.long)
    cache = SwaxCache(model.config)
    logits = []
    with torch.no_grad():
        for a in range(0, x.shape[1], every):
            logits.append(model(input_ids=x[:, a:a + every], past_key_values=cache,
                                use_cache=True).logits[0])
            for i in reset:
                cache.layers[i].reset()
    lg = torch.cat(logits)[:-1].float()
    return torch.nn.functional.cross_entropy(lg, x[0, 1:], reduction="none")


def main(argv=None) -> int:
    from swax_megatron.cliutil import OneLineParser, positive_int

    parser = OneLineParser(prog=os.path.basename(__file__), description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--every", type=positive_int, help="reset period N (default train.seq_length)")
    parser.add_argument("--window", type=positive_int, help="eval window W (default model.swa.window)")
    parser.add_argument("--length", type=positive_int, help="sequence length L")
    parser.add_argument("--sequences", type=positive_int, help="sequences K")
    parser.add_argument("--json", metavar="PATH", help="also write the table as JSON to PATH (a new file)")
    args = parser.parse_args(argv)

    import torch

    from swax_megatron.config.errors import RecipeError
    from swax_megatron.config.resolve import resolve
    from swax_megatron.eval.harness import EvalError, TaskTokenizer, validation_tokens
    from swax_megatron.hf.convert import (ConversionError, convert_checkpoint, find_source, quiet,
                                          single_process_world)

    def fail(msg: str) -> int:
        print(f"state_reset_ppl: error: {msg}", file=sys.stderr)
        return 2

    resolved = os.path.join(args.run_dir, "resolved.yaml")
    if not os.path.isfile(resolved):
        return fail(f"{args.run_dir}: not a run directory (no resolved.yaml)")
    try:
        recipe = resolve(resolved, []).recipe
        source = find_source(args.run_dir)
    except (RecipeError, ConversionError) as e:
        return fail(str(e))
    every = args.every or recipe.train.seq_length
    length = args.length or recipe.eval.ppl_length_factor * recipe.train.seq_length
    count = args.sequences or recipe.eval.ppl_sequences
    if length <= every:
        return fail(f"--length {length} must exceed the reset period {every}")
    if args.json and os.path.exists(args.json):  # never replace an earlier result
        return fail(f"--json {args.json}: exists (choose a new path)")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        return fail(f"--json {args.json}: its directory does not exist")

    quiet()
    try:
        with single_process_world():
            converted = convert_checkpoint(source, dtype="fp32", window=args.window)
            converted.megatron = None
    except ConversionError as e:
        return fail(str(e))
    model = converted.hf.eval()
    mlstm = [i for i, t in enumerate(model.config.layer_types) if t == "mlstm"]
    if not mlstm:
        return fail(f"{args.run_dir}: the model has no mLSTM layers (pattern {recipe.model.layer_pattern})")
    try:
        stream = validation_tokens(recipe, TaskTokenizer(converted.tokenizer))
    except EvalError as e:
        return fail(str(e))
    count = min(count, len(stream) // length)
    if count == 0:
        return fail(f"the validation text has {len(stream):,} tokens, fewer than one sequence of {length:,}")

    rows = [("no reset", [])] + [(f"mLSTM layer {i}", [i]) for i in mlstm] + [("all mLSTM layers", mlstm)]
    edges = [0, every, 2 * every, length] if length > 2 * every else [0, every, length]
    sums = {name: [0.0] * (len(edges) - 1) for name, _ in rows}
    worst = 0.0
    for s in range(count):
        ids = stream[s * length:(s + 1) * length]
        with torch.no_grad():
            plain = torch.nn.functional.cross_entropy(
                model(input_ids=torch.tensor([ids])).logits[0, :-1].float(),
                torch.tensor(ids[1:]), reduction="none")
        for name, reset in rows:
            loss = chunked_losses(model, ids, every, reset)
            if not reset:
                worst = max(worst, float((loss - plain).abs().max()))
            # loss[t] predicts position t + 1
            for k in range(len(edges) - 1):
                a, b = max(edges[k] - 1, 0), edges[k + 1] - 1
                sums[name][k] += float(loss[a:b].mean()) / count
        print(f"  sequence {s + 1}/{count}", file=sys.stderr)
    if worst > AGREE_ATOL:
        return fail(f"the cached, chunked forward differs from one forward by {worst:.2e} (> {AGREE_ATOL}): "
                    f"the model's cache is broken, no finding can be read off")

    cols = [f"{a}-{b}" for a, b in zip(edges, edges[1:])]
    window = args.window or recipe.model.swa.window
    print(f"{args.run_dir} (step {source.step}): loss (nats/token) by position, {count} sequences of "
          f"{length} tokens, eval window {window}, state reset every {every} tokens")
    print("| reset | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, _ in rows:
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in sums[name]) + " |")
    if args.json:
        from swax_megatron.files import atomic_write

        atomic_write(args.json, json.dumps({
            "run_dir": args.run_dir, "step": source.step, "every": every, "length": length,
            "window": window, "sequences": count, "edges": edges,
            "loss": {name: sums[name] for name, _ in rows}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
