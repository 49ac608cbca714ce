#!/usr/bin/env python
"""Write a Hugging Face SWAX export back as a swax_megatron checkpoint.

    python tools/convert_from_hf.py hf/tiny-swax --out ckpt/tiny-swax [--tp N --pp M]
        [--distributed-optimizer | --no-distributed-optimizer]
    swax-train RECIPE checkpoint.load=ckpt/tiny-swax checkpoint.finetune=true

The checkpoint root gets iter_NNNNNNN/ (the exported step; dist_checkpointing, saved at tp N x
pp M, with its manifest) and `latest`. It holds the weights only (an export has no optimizer
state), so swax-train starts from it with checkpoint.finetune=true; it reshards to any layout on
load. megatron -> HF -> megatron is bitwise for fp32 exports (and bf16 ones of bf16 runs). The
recipe recorded in it is the export's own (swax_export.json) or one derived from config.json.
Exit codes: 0 done, 2 bad input (one line on stderr); nothing is written on an error.
"""

import sys
import warnings

warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

from swax_megatron.hf.convert import main_from_hf  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_from_hf())
