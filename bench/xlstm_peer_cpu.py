"""SWAX against transformers' own xLSTMForCausalLM on CPU (issue 12): prefill and decode tokens/s.

    python bench/xlstm_peer_cpu.py                       # prompts 1024 and 8192 tokens, 128 new tokens
    python bench/xlstm_peer_cpu.py --quick               # smoke run
    python bench/xlstm_peer_cpu.py --prompts 2048 --new-tokens 256 --repeats 7 --threads 1

Models (random weights, fp32, batch 1, vocabulary 2048, untied embeddings on both sides, since
transformers' xLSTMForCausalLM does not tie them):

  swax        the tiny SWAX of bench/generate_cpu.py (XS*2, hidden 128, window 128, MLP 384) through
              swax_megatron/hf, mlstm_kernel "auto" (prefill with swax_megatron.ops' chunkwise mLSTM,
              the op the package's training runs; what a user with the package installed gets);
  swax_plain  the same weights with mlstm_kernel "plain" (the standalone file's own chunkwise code: what
              `trust_remote_code=True` without swax_megatron runs), for information;
  xlstm       transformers.xLSTMForCausalLM (pure mLSTM, the xLSTM-7B block), hidden 128, 4 blocks, 2
              heads, qk/v dim factors 0.5 / 1.0 (the SWAX mLSTM layer's shapes), feed-forward width set
              for the same parameter count. Without the `xlstm` package (not installed) transformers runs
              its own torch kernels; the settings are spelled out: mode "inference", chunkwise_kernel
              "chunkwise--native_autograd", sequence_kernel "native_sequence__native", step_kernel
              "native", chunk_size 64 (as SWAX), autocast_kernel_dtype and inference_state_dtype "float32".

Each repeat runs `generate(prompt, max_new_tokens=N, do_sample=False)` once per model, interleaved, the
same random prompt for all; a streamer stamps the time when generate() hands over the prompt, the first
new token (after the prefill forward) and each later token. prefill tokens/s = prompt / (first token -
start); decode tokens/s = (N - 1) / (last token - first token). Minimum times over the repeats (median
also shown). A forward hook checks that every decode step feeds one token (the cache is used).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
import warnings

import torch

from benchutil import cpu_model, emit
from generate_cpu import VOCAB, build, n_params, swax_config

XLSTM_KERNELS = dict(mode="inference", chunkwise_kernel="chunkwise--native_autograd",
                     sequence_kernel="native_sequence__native", step_kernel="native", chunk_size=64,
                     autocast_kernel_dtype="float32", inference_state_dtype="float32")


def xlstm_config(ffn_width: int):
    from transformers import xLSTMConfig

    return xLSTMConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=4, num_heads=2, qk_dim_factor=0.5,
                       v_dim_factor=1.0, ffn_proj_factor=ffn_width / 128, ffn_round_up_to_multiple_of=1,
                       tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=None,
                       **XLSTM_KERNELS)


def build_xlstm(ffn_width: int, seed: int = 0):
    from transformers import xLSTMForCausalLM

    torch.manual_seed(seed)
    return xLSTMForCausalLM(xlstm_config(ffn_width)).eval()


def matched_xlstm_width(target: int) -> int:
    """Feed-forward width of the xLSTM whose parameter count is closest to `target` (linear in it)."""
    p0, p1 = n_params(build_xlstm(256)), n_params(build_xlstm(320))
    return max(1, round(256 + (target - p0) * 64 / (p1 - p0)))


class Stamps:
    """A generate() streamer that only records when each put() arrives."""

    def __init__(self):
        self.t = []

    def put(self, value):
        self.t.append(time.perf_counter())

    def end(self):
        pass


class InputLengths:
    """Records the sequence length of every forward (a hook on the input embedding)."""

    def __init__(self, model):
        self.lengths = []
        self.handle = model.get_input_embeddings().register_forward_pre_hook(
            lambda mod, inp: self.lengths.append(inp[0].shape[-1]))


def run_once(model, ids, new_tokens: int):
    s = Stamps()
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             streamer=s)
    assert out.shape[1] == ids.shape[1] + new_tokens and len(s.t) == new_tokens + 1, (out.shape, len(s.t))
    prefill = s.t[1] - s.t[0]
    decode = (s.t[-1] - s.t[1]) / (new_tokens - 1)
    return prefill, decode, out[0, ids.shape[1]:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, nargs="+", default=[1024, 8192])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: prompt 256, 16 new tokens, 2 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.new_tokens, args.repeats, args.warmup = [256], 16, 2, 1
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)

    swax = build(swax_config(tie=False), args.seed)
    plain = build(swax_config(tie=False), args.seed)
    plain.config.mlstm_kernel = "plain"
    width = matched_xlstm_width(n_params(swax))
    xlstm = build_xlstm(width, args.seed)
    models = {"swax": swax, "swax_plain": plain, "xlstm": xlstm}
    emit({"bench": "setup", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
          "transformers": _version("transformers"), "threads": torch.get_num_threads(),
          "load_avg": [round(x, 2) for x in os.getloadavg()],
          "params": {k: n_params(m) for k, m in models.items()}, "xlstm_ffn_width": width,
          "swax_intermediate_size": swax.config.intermediate_size, "xlstm_settings": XLSTM_KERNELS,
          "xlstm_package_installed": _installed("xlstm"), "new_tokens": args.new_tokens, "repeats": args.repeats})

    rows, ratios = [], []
    for S in args.prompts:
        ids = torch.randint(0, VOCAB, (1, S), generator=torch.Generator().manual_seed(args.seed + S))
        # The cache is used: after the prompt, every forward feeds one token.
        for name, m in models.items():
            hook = InputLengths(m)
            for _ in range(args.warmup):
                run_once(m, ids, min(args.new_tokens, 8))
            hook.handle.remove()
            assert hook.lengths[0] == S and set(hook.lengths[1:]) == {1}, (name, hook.lengths[:4])
        times = {k: {"prefill": [], "decode": []} for k in models}
        for r in range(args.repeats):
            order = list(models) if r % 2 == 0 else list(models)[::-1]
            for name in order:
                pre, dec, _ = run_once(models[name], ids, args.new_tokens)
                times[name]["prefill"].append(pre)
                times[name]["decode"].append(dec)
        best = {}
        for name, t in times.items():
            best[name] = (min(t["prefill"]), min(t["decode"]))
            row = {"bench": "generate", "model": name, "prompt": S, "new_tokens": args.new_tokens,
                   "prefill_s_min": min(t["prefill"]), "prefill_s_median": statistics.median(t["prefill"]),
                   "prefill_tokens_per_s": S / min(t["prefill"]),
                   "decode_ms_per_token_min": 1e3 * min(t["decode"]),
                   "decode_ms_per_token_median": 1e3 * statistics.median(t["decode"]),
                   "decode_tokens_per_s": 1 / min(t["decode"]), "threads": args.threads}
            rows.append(row)
            emit(row)
        d = best["xlstm"][1] / best["swax"][1]
        pf = best["xlstm"][0] / best["swax"][0]
        ratios += [
            {"ratio": "swax / xlstm decode tokens/s", "prompt": S, "value": round(d, 3), "goal": ">= 1.0",
             "met": d >= 1.0},
            {"ratio": "swax / xlstm prefill tokens/s", "prompt": S, "value": round(pf, 3), "goal": "> 1.0",
             "met": pf > 1.0},
            {"ratio": "swax_plain / xlstm prefill tokens/s", "prompt": S,
             "value": round(best["xlstm"][0] / best["swax_plain"][0], 3)},
            {"ratio": "swax_plain / xlstm decode tokens/s", "prompt": S,
             "value": round(best["xlstm"][1] / best["swax_plain"][1], 3)},
        ]
    for r in ratios:
        emit(r)
    emit({"load_avg_end": [round(x, 2) for x in os.getloadavg()]})
    return 0


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


def _installed(pkg: str) -> bool:
    from importlib.util import find_spec

    return find_spec(pkg) is not None


if __name__ == "__main__":
    sys.exit(main())
