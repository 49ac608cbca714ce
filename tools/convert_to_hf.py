#!/usr/bin/env python
"""Export a swax_megatron checkpoint as a Hugging Face model directory.

    python tools/convert_to_hf.py runs/tiny-swax-1a2b3c4d --out hf/tiny-swax [--step N]
        [--dtype bf16|fp32] [--window W] [--verify] [--tokenizer TOK.model] [--max-shard-size 5GB]

RUN_DIR_OR_CHECKPOINT is a run directory, a checkpoint root or one iter_* directory, saved at any
TP/PP/DP layout. The export holds safetensors weights (shards + index when large), config.json
(auto_map: loads with trust_remote_code=True) and the modelling files, generation_config.json, the
tokenizer (tokenizer.json: AutoTokenizer, offline), README.md (model card: recipe, training tokens,
final losses) and swax_export.json (provenance; tools/convert_from_hf.py reads it back). --verify
prints the max logit difference between the megatron and HF models and whether greedy generations
agree, and writes nothing when they do not. The export appears complete or not at all.
Exit codes: 0 done, 1 verification failed, 2 bad input (one line on stderr).
"""

import sys
import warnings

# megatron-core warns at import about optional GPU extensions; irrelevant for conversion.
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

from swax_megatron.hf.convert import main_to_hf  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_to_hf())
