"""Suite-wide setup: megatron-core is imported and patched for CPU once, in the parent process,
so that the fork harness (tests/dist.py) hands ready-made interpreters to its ranks."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # `from dist import run_distributed`

import torch  # noqa: E402

from swax_megatron.parallel import cpu_compat  # noqa: E402

cpu_compat.apply()
