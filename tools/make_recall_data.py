#!/usr/bin/env python
"""Write the synthetic recall training documents (swax_megatron/data/recall_data.py) as a
Megatron indexed dataset (<prefix>.bin + .idx + .meta.json), for a recipe to blend with text.

    python tools/make_recall_data.py --output-prefix data/recall --seq-length 256 \
        --documents 20000 --vocab-size 512 --cache-dir runs/.cache
    python tools/make_recall_data.py --output-prefix data/recall --seq-length 256 \
        --tokenizer-model tok/web.model

The tokenizer is the run's: --tokenizer-model (data.tokenizer_model), or the default tokenizer of
--vocab-size (data.tokenizer_vocab_size) trained on the embedded corpus and cached in --cache-dir
(data.cache_dir, default <run.output_root>/.cache). Documents have --seq-length tokens with
their end-of-document token (one document per training sample); passkeys are planted at most
--max-distance tokens before their query. Deterministic by --seed; a rerun with the same
arguments finds the files and writes nothing.
"""

import argparse
import os
import sys
import warnings

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed")
warnings.filterwarnings("ignore", message=".*Apex is not installed")


def _distance(text: str):
    """--max-distance: an integer, or 'none'."""
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def main(argv=None) -> int:
    from swax_megatron.cliutil import OneLineParser, nonnegative_int, positive_int
    from swax_megatron.data.recall_data import TRAIN_MAX_DISTANCE

    parser = OneLineParser(prog=os.path.basename(__file__), description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-prefix", required=True, help="writes <prefix>.bin/.idx")
    parser.add_argument("--seq-length", type=positive_int, required=True,
                        help="tokens per document (the recipe's train.seq_length)")
    parser.add_argument("--documents", type=positive_int, default=20000)
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--max-distance", type=_distance, default=TRAIN_MAX_DISTANCE,
                        help="passkeys are planted at most this many tokens before their query; "
                             "'none': anywhere in the document (default %(default)s)")
    tok = parser.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer-model", help="SentencePiece .model (data.tokenizer_model)")
    tok.add_argument("--vocab-size", type=positive_int, default=8000,
                     help="the default tokenizer's size (data.tokenizer_vocab_size)")
    parser.add_argument("--cache-dir", default="runs/.cache",
                        help="where the default tokenizer is cached (data.cache_dir)")
    args = parser.parse_args(argv)

    from swax_megatron.data import DataError, SentencePieceTokenizer, default_tokenizer
    from swax_megatron.data.recall_data import write_recall_dataset

    try:
        if args.tokenizer_model:
            tokenizer = SentencePieceTokenizer(args.tokenizer_model)
        else:
            tokenizer = default_tokenizer(args.cache_dir, args.vocab_size)
        meta = write_recall_dataset(args.output_prefix, tokenizer, length=args.seq_length,
                                    count=args.documents, seed=args.seed,
                                    max_distance=args.max_distance)
    except DataError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    verb = "found" if meta["reused"] else "wrote"
    print(f"{verb} {args.output_prefix}.bin/.idx: {meta['documents']} documents "
          f"({meta['kinds']['mqar']} mqar, {meta['kinds']['passkey']} passkey), "
          f"{meta['tokens']} tokens, passkey distances <= {args.max_distance or 'the length'}, "
          f"reserved ids {meta['reserved_ids'][0]}..{meta['reserved_ids'][1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
