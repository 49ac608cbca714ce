"""Bad input to the converters and `swax generate`: one line on stderr, exit status 2 (1 for a failed
--verify), and nothing written: neither the destination nor a hidden partial directory beside it.

Checkpoints are altered the way real accidents look: a flipped byte (damage), the checkpoints of
another run in a run directory, a common state describing another model (with the manifest
rewritten, so the checkpoint looks intact), a tokenizer of another size; exports with a tensor
removed, added or reshaped, a config.json edited away from the recorded recipe, another tokenizer.
"""

import json
import shutil

import pytest
import torch
from convert_testing import copy_run, export, latest, leftovers, other_tokenizer, rewrite_common, run

from swax_megatron.hf import convert


def _one_error(capsys, code, expected_code=2, *fragments, prog="convert_to_hf.py") -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: error:")]
    assert code == expected_code, err
    assert len(errors) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    print(errors[0])  # shown with pytest -s
    return errors[0]


def _to_hf(capsys, tmp_path, source, *fragments, extra=(), code=2):
    out = tmp_path / "export"
    rc = convert.main_to_hf([str(source), "--out", str(out), *extra])
    line = _one_error(capsys, rc, code, *fragments)
    assert leftovers(tmp_path, "export") == []
    return line


def _from_hf(capsys, tmp_path, hf_dir, *fragments, extra=()):
    out = tmp_path / "ckpt"
    rc = convert.main_from_hf([str(hf_dir), "--out", str(out), *extra])
    line = _one_error(capsys, rc, 2, *fragments, prog="convert_from_hf.py")
    assert leftovers(tmp_path, "ckpt") == []
    return line


# --- convert_to_hf ------------------------------------------------------------------------------

def test_existing_output_directory(tmp_path_factory, tmp_path, capsys):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "mine.txt").write_text("keep")
    rc = convert.main_to_hf([str(run(tmp_path_factory, "pp2")), "--out", str(tmp_path / "export")])
    _one_error(capsys, rc, 2, "already exists")
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["mine.txt"]


def test_run_directory_without_checkpoints(tmp_path_factory, tmp_path, capsys):
    src = tmp_path / "run"
    shutil.copytree(run(tmp_path_factory, "pp2"), src, ignore=shutil.ignore_patterns("checkpoints", ".lock"))
    _to_hf(capsys, tmp_path, src, "no checkpoint to convert")
    (src / "checkpoints").mkdir()  # an empty checkpoint root
    _to_hf(capsys, tmp_path, src, "no checkpoint to convert")
    _to_hf(capsys, tmp_path, tmp_path / "nowhere", "does not exist")
    _to_hf(capsys, tmp_path, run(tmp_path_factory, "pp2"), "no checkpoint of step 3", extra=["--step", "3"])


def test_damaged_checkpoint(tmp_path_factory, tmp_path, capsys):
    src = copy_run(run(tmp_path_factory, "pp2"), tmp_path / "run")
    shard = sorted(latest(src).glob("*.distcp"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    _to_hf(capsys, tmp_path, src, "damaged checkpoint", shard.name)


def test_checkpoint_of_another_recipe(tmp_path_factory, tmp_path, capsys):
    src = copy_run(run(tmp_path_factory, "tp2"), tmp_path / "run")
    shutil.rmtree(src / "checkpoints")
    shutil.copytree(run(tmp_path_factory, "pp2") / "checkpoints", src / "checkpoints",
                    ignore=shutil.ignore_patterns(".lock"))
    _to_hf(capsys, tmp_path, src, "written by another recipe", "model.add_qkv_bias: False -> True")


def test_recorded_recipe_altered(tmp_path_factory, tmp_path, capsys):
    ckpt = tmp_path / "root" / "iter_0000004"
    shutil.copytree(latest(run(tmp_path_factory, "pp2")), ckpt)
    rewrite_common(ckpt, lambda c: c["recipe"]["model"].update(rope_base=500.0), keep_hash=True)
    _to_hf(capsys, tmp_path, ckpt, "does not hash to its config hash")


@pytest.mark.parametrize("edit, fragments", [
    (dict(num_layers=5, layer_pattern="XSGXS"), ["missing tensor(s) decoder.layers.4."]),
    (dict(num_layers=3, layer_pattern="XSG"), ["unexpected tensor(s) decoder.layers.3."]),
    (dict(ffn_hidden_size=256), ["shape mismatch: decoder.layers.0.mlp.linear_fc1.weight is [384, 64]",
                                 "[512, 64]"]),
], ids=["missing", "extra", "shape"])
def test_tensors_that_do_not_fit_the_recipe(tmp_path_factory, tmp_path, capsys, edit, fragments):
    ckpt = tmp_path / "root" / "iter_0000004"
    shutil.copytree(latest(run(tmp_path_factory, "pp2")), ckpt)
    rewrite_common(ckpt, lambda c: c["recipe"]["model"].update(edit))
    _to_hf(capsys, tmp_path, ckpt, *fragments)


@pytest.mark.parametrize("pieces", [380, 600])
def test_tokenizer_that_does_not_fit(tmp_path_factory, tmp_path, capsys, pieces):
    tok = other_tokenizer(tmp_path_factory, pieces)
    _to_hf(capsys, tmp_path, run(tmp_path_factory, "pp2"), f"{pieces} pieces (padded to {-(-pieces // 128) * 128}) do not fit the model's vocabulary of 512",
           extra=["--tokenizer", str(tok)])


def test_failed_verification_writes_nothing(tmp_path_factory, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(convert.TOLERANCE, torch.float32, 1e-12)
    _to_hf(capsys, tmp_path, run(tmp_path_factory, "pp2"), "does not reproduce", extra=["--verify"], code=1)


# --- convert_from_hf ----------------------------------------------------------------------------

@pytest.fixture
def hf_copy(tmp_path_factory, tmp_path):
    dest = tmp_path / "hf"
    shutil.copytree(export(tmp_path_factory, "pp2")[0], dest)
    return dest


def _edit_weights(hf_dir, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(hf_dir / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(hf_dir, **changes):
    config = json.loads((hf_dir / "config.json").read_text())
    config.update(changes)
    (hf_dir / "config.json").write_text(json.dumps(config))


def test_import_existing_output(hf_copy, tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    rc = convert.main_from_hf([str(hf_copy), "--out", str(tmp_path / "ckpt")])
    _one_error(capsys, rc, 2, "already exists", prog="convert_from_hf.py")
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_import_missing_tensor(hf_copy, tmp_path, capsys):
    _edit_weights(hf_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    _from_hf(capsys, tmp_path, hf_copy, "missing tensor model.layers.1.mlp.up_proj.weight")


def test_import_extra_tensor(hf_copy, tmp_path, capsys):
    _edit_weights(hf_copy, lambda t: t.update({"model.layers.0.mlp.extra.weight": torch.zeros(2, 2)}))
    _from_hf(capsys, tmp_path, hf_copy, "unexpected tensor(s)", "model.layers.0.mlp.extra.weight")


def test_import_shape_mismatch(hf_copy, tmp_path, capsys):
    def cut(t):
        t["model.layers.2.mlp.down_proj.weight"] = t["model.layers.2.mlp.down_proj.weight"][:, :100].contiguous()

    _edit_weights(hf_copy, cut)
    _from_hf(capsys, tmp_path, hf_copy, "shape mismatch: model.layers.2.mlp.down_proj.weight is [64, 100]",
             "[64, 192]")


def test_import_config_of_another_model(hf_copy, tmp_path, capsys):
    _edit_config(hf_copy, rope_theta=500.0)
    _from_hf(capsys, tmp_path, hf_copy, "describes another model", "model.rope_base")


def test_import_tokenizer_that_does_not_fit(tmp_path_factory, hf_copy, tmp_path, capsys):
    from swax_megatron.hf.hf_tokenizer import hf_tokenizer_from_sentencepiece

    hf_tokenizer_from_sentencepiece(other_tokenizer(tmp_path_factory, 600)).save_pretrained(hf_copy)
    _from_hf(capsys, tmp_path, hf_copy, "600 tokens do not fit the model's vocabulary of 512")


def test_import_not_a_swax_export(hf_copy, tmp_path, capsys):
    _edit_config(hf_copy, model_type="llama")
    _from_hf(capsys, tmp_path, hf_copy, "not a SWAX model")
    (hf_copy / "config.json").unlink()
    _from_hf(capsys, tmp_path, hf_copy, "no config.json")
    _from_hf(capsys, tmp_path, tmp_path / "nowhere", "not a directory")


def test_import_without_weights(hf_copy, tmp_path, capsys):
    (hf_copy / "model.safetensors").unlink()
    _from_hf(capsys, tmp_path, hf_copy, "no model.safetensors")


def test_import_layout_the_model_cannot_take(hf_copy, tmp_path, capsys):
    _from_hf(capsys, tmp_path, hf_copy, "--tp 3", "not divisible by tensor parallel size 3", extra=["--tp", "3"])
    _from_hf(capsys, tmp_path, hf_copy, "--pp 5", extra=["--pp", "5"])  # 4 layers


def test_import_from_config_json_alone(tmp_path_factory, hf_copy, tmp_path):
    """Without swax_export.json (a model made with SwaxHFConfig, say) the recipe comes from config.json;
    the weights still arrive bitwise."""
    from convert_testing import megatron_state

    (hf_copy / "swax_export.json").unlink()
    result = convert.import_from_hf(hf_copy, tmp_path / "ckpt", pp=2)
    assert result.step == 0
    want, got = megatron_state(latest(run(tmp_path_factory, "pp2"))), megatron_state(tmp_path / "ckpt")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


# --- swax generate --------------------------------------------------------------------------------

def test_generate_bad_input(tmp_path_factory, tmp_path, capsys):
    from swax_megatron.cli import main

    src = tmp_path / "run"
    shutil.copytree(run(tmp_path_factory, "pp2"), src, ignore=shutil.ignore_patterns("checkpoints", ".lock"))
    rc = main(["generate", str(src), "--prompt", "x"])
    _one_error(capsys, rc, 2, "no checkpoint to convert", prog="swax")
    rc = main(["generate", str(export(tmp_path_factory, "pp2")[0]), "--prompt", "x", "--step", "4"])
    _one_error(capsys, rc, 2, "--step applies to run directories", prog="swax")
