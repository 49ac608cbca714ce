"""Shared pieces of the conversion tests: a tiny real corpus, real tiny training runs at TP=2 and
PP=2 (swax-train forked from the test process, tests/training/forkrun.py), their exports, and
helpers to alter checkpoints the way a damaged or mixed-up one looks.

Everything expensive is built once per test session (module-level cache keyed by the session's
temporary root), whichever test module asks first.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Dict

import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "training"))  # forkrun, as tests/training import it

from forkrun import TINY_RECIPE, find_run_dir, fork_run, tiny_overrides, train_records  # noqa: E402

# Two runs that between them exercise every mapping: TP=2 with the distributed optimizer, an
# untied output layer, q/k/v biases and LayerNorm; PP=2 (stage marker) with tied embeddings and
# RMSNorm. Both have mLSTM, sliding and global layers; windows shorter than the sequence.
RUNS = {
    "tp2": ["parallel.tensor_model_parallel_size=2", "parallel.use_distributed_optimizer=true",
            "model.layer_pattern=XSGX", "model.num_layers=4", "model.tie_embeddings=false",
            "model.add_qkv_bias=true", "model.normalization=LayerNorm"],
    "pp2": ["parallel.pipeline_model_parallel_size=2", "model.layer_pattern=XS|GX", "model.num_layers=4"],
}
LAYOUT_FLAGS = {"tp2": dict(tp=2, pp=1), "pp2": dict(tp=1, pp=2)}
STEPS = 4

_CACHE: Dict[str, object] = {}


def _root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "hf_convert"


def corpus(tmp_path_factory) -> dict:
    """Paragraphs of three plays, a 512-piece tokenizer, a megatron indexed dataset."""
    if "corpus" not in _CACHE:
        from forkrun import make_tiny_corpus

        _CACHE["corpus"] = make_tiny_corpus(_root(tmp_path_factory) / "corpus")
        _CACHE["docs"] = _CACHE["corpus"]["docs"]
    return _CACHE["corpus"]


def train(tmp_path_factory, name: str, extra=(), *, steps: int = STEPS, world: int = 2) -> Path:
    """A finished tiny training run (its run directory); 2 forked swax-train processes."""
    key = f"run:{name}"
    if key not in _CACHE:
        out = _root(tmp_path_factory) / name
        argv = [TINY_RECIPE, *tiny_overrides(corpus(tmp_path_factory), out / "runs", steps=steps, every=steps,
                                              extra=list(extra))]
        launch = fork_run(argv, world, out / "logs", timeout=180)
        assert launch.codes == [0] * world, launch.log
        _CACHE[key] = find_run_dir(out / "runs")
    return _CACHE[key]


def train_on_embedded_corpus(tmp_path_factory) -> Path:
    """A 2-step single-process run on the default data (embedded corpus, default tokenizer of 512
    pieces, trained into <output_root>/.cache)."""
    key = "run:embedded"
    if key not in _CACHE:
        out = _root(tmp_path_factory) / "embedded"
        argv = [TINY_RECIPE, f"run.output_root={out / 'runs'}", "data.tokenizer_vocab_size=512",
                "model.hidden_size=64", "model.num_layers=2", "model.layer_pattern=XS",
                "model.num_attention_heads=4", "model.mlstm.num_heads=2", "model.mlstm.chunk_size=32",
                "model.swa.window=64", "train.seq_length=128", "train.micro_batch_size=2",
                "train.global_batch_size=4", "train.steps=2", "train.eval_every=2", "train.eval_iters=1",
                "train.window_schedule.short=16", "train.window_schedule.long=64", "optim.warmup_steps=1",
                "checkpoint.every_steps=2", "checkpoint.every_minutes=null", "slurm.gpus_per_node=1"]
        launch = fork_run(argv, 1, out / "logs", timeout=180)
        assert launch.codes == [0], launch.log
        _CACHE[key] = find_run_dir(out / "runs")
    return _CACHE[key]


def run(tmp_path_factory, layout: str) -> Path:
    return train(tmp_path_factory, layout, RUNS[layout])


def export(tmp_path_factory, layout: str):
    """(export directory, ExportResult) of a run's last checkpoint, fp32, verified."""
    key = f"export:{layout}"
    if key not in _CACHE:
        from swax_megatron.hf.convert import export_to_hf

        lines = []
        out = _root(tmp_path_factory) / f"hf_{layout}"
        result = export_to_hf(run(tmp_path_factory, layout), out, verify=True, report=lines.append)
        assert lines == [result.verify.line()]
        _CACHE[key] = (out, result)
    return _CACHE[key]


def other_tokenizer(tmp_path_factory, pieces: int) -> Path:
    """A SentencePiece model of `pieces` pieces trained on the same paragraphs."""
    key = f"tok:{pieces}"
    if key not in _CACHE:
        from swax_megatron.data.tokenizer import train_tokenizer

        corpus(tmp_path_factory)
        root = _root(tmp_path_factory) / "tokenizers"
        root.mkdir(exist_ok=True)
        _CACHE[key] = train_tokenizer(_CACHE["docs"], root / f"tok{pieces}", pieces, num_threads=1).model_path
    return _CACHE[key]


def megatron_state(checkpoint: Path) -> Dict[str, torch.Tensor]:
    """The TP=1 / PP=1 state dict (tensors only) a checkpoint loads into, in this process."""
    from swax_megatron.hf import convert

    with convert.single_process_world():
        source = convert.find_source(checkpoint)
        ckpt = convert.read_checkpoint(source)
        model = convert.build_megatron(ckpt.recipe, ckpt.vocab_size, ckpt.dtype)
        convert.load_weights(model, source.checkpoint)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()
                 if isinstance(v, torch.Tensor)}
        del model
    return state


def latest(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


def rewrite_common(checkpoint: Path, edit, keep_hash: bool = False) -> None:
    """Change a checkpoint's common state (`edit(common)`; the recipe's config hash follows it
    unless `keep_hash`) and rewrite its manifest, so it looks intact: a consistent checkpoint of
    another model."""
    from swax_megatron.config.resolve import config_hash
    from swax_megatron.hf.convert import recipe_from_dict
    from swax_megatron.training.checkpoint import MANIFEST, file_digest

    common = torch.load(checkpoint / "common.pt", weights_only=False)
    edit(common)
    if not keep_hash:
        common["config_hash"] = config_hash(recipe_from_dict(common["recipe"], "test"))
    torch.save(common, checkpoint / "common.pt")
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    manifest["files"]["common.pt"] = file_digest(checkpoint / "common.pt")
    (checkpoint / MANIFEST).write_text(json.dumps(manifest))


def leftovers(parent: Path, name: str) -> list:
    """What a failed conversion left beside its destination (nothing, when it is atomic)."""
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))


def first_train_loss(run_dir: Path) -> float:
    return next(r["loss"] for r in train_records(run_dir) if r["kind"] == "train")


__all__ = ["RUNS", "LAYOUT_FLAGS", "corpus", "train", "train_on_embedded_corpus", "run", "export", "other_tokenizer", "megatron_state",
           "latest", "copy_run", "rewrite_common", "leftovers", "first_train_loss", "os"]
