"""NIAH evaluation throughput on CPU (issue 13): our harness against lm-eval's HF path, the same prompts.

    python bench/niah_cpu.py                          # 4k and 16k, depths 0/50/100 x 4 prompts, batch 4
    python bench/niah_cpu.py --quick                  # smoke run: 1k, depths 0/100 x 2 prompts
    python bench/niah_cpu.py --lengths 4096 16384 --prompts 8 --batch-size 4 --threads 2

The tiny SWAX of recipes/tiny (hidden 128, "XS*2", window 128, tied embeddings), random weights, fp32,
with a 2048-piece tokenizer trained on the embedded corpus (the recipe's tokenizer_vocab_size), saved
as an export directory (remote code, like tools/convert_to_hf.py writes). Per length, the niah_single_1
prompts `swax eval` builds (swax_megatron/eval/niah.py task.grid: `--depths` x `--prompts` samples, in
its order, depth by depth) are decoded greedily, 128 new tokens at most, `--batch-size` prompts at a
time, by:

  swax     the harness' own path (swax_megatron/eval/harness.py `_run_generation` on its HFBackend: the
           batch's common prefix prefilled once and its SwaxCache copied to every row, the rest left-padded
           with an attention mask, then greedy steps; our tokenizer ids);
  lm_eval  lm-eval 0.4.13's HFLM (`generate_until`, the path its RULER tasks take), on the same export
           loaded by HFLM, the same prompt texts, {"until": [], "max_gen_toks": 128, "do_sample": False}.

Both paths run in this process in turns (per length, after one warm-up prompt each; `--repeats`
rounds, each round's first path alternating, the fastest of each path counts);
reported: wall seconds, prompts per second, prompt tokens, tokens generated (all rows of the batch
count, up to the first end-of-document token) and the speed ratio swax / lm_eval.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from swax_megatron.eval.lm_eval_adapter import OFFLINE_ENV  # noqa: E402  (imports no HF library)

os.environ.update(OFFLINE_ENV)  # before transformers / lm_eval / datasets are imported

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import cpu_model, emit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GEN_TOKENS = 128


def make_export(root: Path, seed: int = 0) -> Path:
    """The tiny SWAX with random weights and its tokenizer as an export directory."""
    from swax_megatron.data.embedded import embedded_corpus
    from swax_megatron.data.tokenizer import train_tokenizer
    from swax_megatron.hf import SwaxForCausalLM, SwaxHFConfig
    from swax_megatron.hf.hf_tokenizer import hf_tokenizer_from_sentencepiece, token_ids

    sp = train_tokenizer(embedded_corpus("train"), root / "tok", 2048, num_threads=1)
    ids = token_ids(sp.model_path)
    config = SwaxHFConfig(vocab_size=2048, hidden_size=128, intermediate_size=384,
                          layer_types=["mlstm", "sliding_attention"] * 2, num_attention_heads=4,
                          num_key_value_heads=2, sliding_window=128, mlstm_num_heads=2, mlstm_qk_head_dim=32,
                          mlstm_v_head_dim=64, tie_word_embeddings=True,
                          pad_token_id=ids["pad"] if ids["pad"] is not None else ids["eos"],
                          eos_token_id=ids["eos"], bos_token_id=ids["bos"])
    torch.manual_seed(seed)
    model = SwaxForCausalLM(config).eval()
    out = root / "export"
    model.save_pretrained(out)
    hf_tokenizer_from_sentencepiece(sp.model_path).save_pretrained(out)
    return out


def samples_at(tok, length: int, per_depth: int, depths) -> list:
    """The prompts `swax eval` runs for one length, in its order (task.grid: depth by depth,
    `per_depth` samples each), so a batch holds one depth's samples as it does there."""
    from swax_megatron.eval import get_task

    task = get_task("niah_single_1")
    return task, list(task.grid(tok, lengths=[length], depths=list(depths), num_samples=per_depth, seed=0))


def run_swax(model, tok, task, samples, length: int, batch_size: int) -> dict:
    """The harness' generation path (what `swax eval` runs for niah_*)."""
    from swax_megatron.eval import harness

    job = harness._Job(task.name, "generation", model.config.sliding_window,
                       {"lengths": [length], "depths": None, "samples": len(samples), "seed": 0},
                       "bench", Path("unused.json"))
    recipe = SimpleNamespace(eval=SimpleNamespace(batch_size=batch_size))
    original = harness._samples
    harness._samples = lambda task_, tok_, job_: samples  # these very prompts
    try:
        t0 = time.perf_counter()
        body = harness._run_generation(harness.HFBackend(model), tok, recipe, job, progress=False)
        seconds = time.perf_counter() - t0
    finally:
        harness._samples = original
    gen = sum(len(tok.tokenize(r["prediction"])) for r in body["records"])
    return {"seconds": seconds, "score": body["score"], "generated_tokens_approx": gen}


def run_lm_eval(lm, samples) -> dict:
    from lm_eval.api.instance import Instance

    gen = {"until": [], "max_gen_toks": GEN_TOKENS, "do_sample": False}
    requests = [Instance(request_type="generate_until", doc={}, arguments=(s.prompt, dict(gen)), idx=0)
                for s in samples]
    t0 = time.perf_counter()
    outputs = lm.generate_until(requests, disable_tqdm=True)
    seconds = time.perf_counter() - t0
    from swax_megatron.eval import get_task

    task = get_task("niah_single_1")
    score = 100.0 * sum(task.score(s, o) for s, o in zip(samples, outputs)) / len(samples)
    return {"seconds": seconds, "score": score,
            "generated_tokens_approx": sum(len(lm.tokenizer(o, add_special_tokens=False)["input_ids"])
                                           for o in outputs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--prompts", type=int, default=4, help="prompts per length and depth")
    ap.add_argument("--depths", type=float, nargs="+", default=[0.0, 50.0, 100.0], help="needle depths, percent")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds (swax, lm_eval) per length; the fastest counts")
    ap.add_argument("--quick", action="store_true", help="1k context, 2 prompts at 2 depths")
    args = ap.parse_args(argv)
    if args.quick:
        args.lengths, args.prompts, args.depths = [1024], 2, [0.0, 100.0]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    import warnings

    warnings.filterwarnings("ignore")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from lm_eval.models.huggingface import HFLM

    from swax_megatron.eval.harness import TaskTokenizer

    with tempfile.TemporaryDirectory(prefix="niah_bench_") as tmp:
        export = make_export(Path(tmp))
        hf_tok = AutoTokenizer.from_pretrained(export)
        tok = TaskTokenizer(SimpleNamespace(hf=hf_tok, fingerprint=None))
        model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True, dtype=torch.float32).eval()
        lm = HFLM(pretrained=str(export), trust_remote_code=True, backend="causal", device="cpu",
                  batch_size=args.batch_size, dtype="float32", max_length=max(args.lengths) + 2 * GEN_TOKENS)
        emit({"bench": "niah_cpu", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "cpu": cpu_model(), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "prompts_per_depth": args.prompts, "depths": args.depths, "lengths": args.lengths, "max_new_tokens": GEN_TOKENS,
              "model": "tiny SWAX XS*2 hidden 128 window 128, random weights, fp32, vocab 2048"})
        task, warm = samples_at(tok, 512, 1, [50.0])
        run_swax(model, tok, task, warm, 512, 1)  # warm-up: first-call costs out of the timings
        run_lm_eval(lm, warm)
        for length in args.lengths:
            task, samples = samples_at(tok, length, args.prompts, args.depths)
            prompt_tokens = sum(len(s.prompt_ids) for s in samples)
            ours = theirs = None
            for r in range(args.repeats):  # rounds alternate which path goes first (no order bias)
                if r % 2 == 0:
                    o = run_swax(model, tok, task, samples, length, args.batch_size)
                    t = run_lm_eval(lm, samples)
                else:
                    t = run_lm_eval(lm, samples)
                    o = run_swax(model, tok, task, samples, length, args.batch_size)
                ours = o if ours is None or o["seconds"] < ours["seconds"] else ours
                theirs = t if theirs is None or t["seconds"] < theirs["seconds"] else theirs
            for name, r in (("swax", ours), ("lm_eval", theirs)):
                emit({"path": name, "length": length, "prompts": len(samples), "prompt_tokens": prompt_tokens,
                      "seconds": round(r["seconds"], 3), "prompts_per_s": round(len(samples) / r["seconds"], 4),
                      "generated_tokens_approx": r["generated_tokens_approx"], "score": r["score"]})
            emit({"length": length, "speedup_swax_over_lm_eval": round(theirs["seconds"] / ours["seconds"], 3)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
