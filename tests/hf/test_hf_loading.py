"""save_pretrained / from_pretrained, fully offline, by both routes:

  registration      `import swax_megatron.hf` registers model_type "swax"; AutoModelForCausalLM loads
                    the package's classes (no trust_remote_code)
  remote code       the export carries configuration_swax.py, modeling_swax.py and cache_swax.py and an
                    auto_map; trust_remote_code=True loads them where swax_megatron cannot be imported

The loading processes are fresh interpreters with HF_HUB_OFFLINE=1, so nothing is cached or fetched.
Reloaded logits must equal the saved model's computed by the same mLSTM path (float32, 1e-6 relative:
the same code on the same weights); where swax_megatron is absent that is the plain path.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hf_testing import ops_forward, rel_err, run_without_swax, tiny_model
from transformers import AutoModelForCausalLM
from transformers.dynamic_module_utils import get_imports

import swax_megatron.hf as swax_hf
from swax_megatron.hf import SwaxForCausalLM

HF_DIR = os.path.dirname(swax_hf.__file__)
MODELLING_FILES = ("configuration_swax.py", "modeling_swax.py", "cache_swax.py")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A saved tiny model (every layer kind) with its input ids, logits and greedy continuation."""
    root = tmp_path_factory.mktemp("hf_export")
    model = tiny_model(torch.float32, mlstm_kernel="auto")
    model.save_pretrained(root / "model")
    ids = torch.randint(1, 101, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits  # swax_megatron.ops' chunkwise mLSTM
        tokens = model.generate(ids, max_new_tokens=6, do_sample=False)
        model.config.mlstm_kernel = "plain"
        plain = model(ids, use_cache=False).logits
    torch.save({"ids": ids, "logits": logits, "plain_logits": plain, "tokens": tokens}, root / "expected.pt")
    return root


def test_export_carries_the_modelling_files_and_auto_map(export):
    files = set(os.listdir(export / "model"))
    assert {"config.json", "model.safetensors", *MODELLING_FILES} <= files
    config = json.loads((export / "model" / "config.json").read_text())
    assert config["model_type"] == "swax"
    assert config["auto_map"] == {"AutoConfig": "configuration_swax.SwaxHFConfig",
                                  "AutoModelForCausalLM": "modeling_swax.SwaxForCausalLM"}
    assert config["layer_types"] == ["mlstm", "sliding_attention", "full_attention", "mlstm", "sliding_attention"]


def test_modelling_files_import_only_torch_and_transformers():
    """What transformers checks before running remote code (imports outside try blocks); the relative
    imports are the files save_pretrained copies along."""
    for name in MODELLING_FILES:
        assert set(get_imports(os.path.join(HF_DIR, name))) <= {"torch", "transformers", "typing", "math"}, name


_LOAD = """
    import os, sys, torch
    from transformers import AutoConfig, AutoModelForCausalLM
    {prelude}
    exp = torch.load(os.path.join({root!r}, "expected.pt"))
    model = AutoModelForCausalLM.from_pretrained(os.path.join({root!r}, "model"), {kwargs}).eval()
    with torch.no_grad():
        logits = model(exp["ids"], use_cache=False).logits
        tokens = model.generate(exp["ids"], max_new_tokens=6, do_sample=False)
    fast = sys.modules[type(model).__module__]._fast_mlstm_chunkwise(torch.device("cpu"), 4) is not None
    ref = exp["logits"] if fast else exp["plain_logits"]
    err = ((logits - ref).abs().max() / ref.abs().max()).item()
    print("class", type(model).__module__, type(model).__name__)
    print("swax_megatron imported", "swax_megatron" in sys.modules)
    print("fast kernel", fast)
    print("rel_err", err)
    print("tokens equal", torch.equal(tokens, exp["tokens"]))
"""


_KEYS = ("class", "swax_megatron imported", "fast kernel", "rel_err", "tokens equal")


def _report(result: subprocess.CompletedProcess) -> dict:
    """The `key value` lines _LOAD prints, as a dict."""
    assert result.returncode == 0, result.stderr[-3000:]
    out = {key: ln[len(key) + 1:] for ln in result.stdout.splitlines() for key in _KEYS if ln.startswith(key + " ")}
    assert len(out) == len(_KEYS), result.stdout + result.stderr[-3000:]
    return out


def test_trust_remote_code_loads_where_swax_megatron_is_absent(export):
    """The export alone (its copied files), in a process where importing swax_megatron fails: the
    model loads, uses the plain mLSTM path (mlstm_kernel "auto" falls back), and reproduces logits
    and greedy tokens of the saved model."""
    code = _LOAD.format(prelude="", root=str(export), kwargs="trust_remote_code=True")
    out = _report(run_without_swax(code, cwd=str(export)))
    assert out["class"].startswith("transformers_modules.") and out["class"].endswith("SwaxForCausalLM")
    assert out["swax_megatron imported"] == "False"
    assert out["fast kernel"] == "False"
    assert float(out["rel_err"]) < 1e-6
    assert out["tokens equal"] == "True"


def test_registration_loads_the_package_classes_without_trust_remote_code(export):
    code = _LOAD.format(prelude="import swax_megatron.hf", root=str(export), kwargs="")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(export / "hf_home"))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(export), env=env,
                            capture_output=True, text=True, timeout=120)
    out = _report(result)
    assert out["class"] == "swax_megatron.hf.modeling_swax SwaxForCausalLM"
    assert out["fast kernel"] == "True"
    assert float(out["rel_err"]) < 1e-6
    assert out["tokens equal"] == "True"


def test_round_trip_keeps_every_tensor(export):
    model = tiny_model(torch.float32, mlstm_kernel="auto")
    loaded = AutoModelForCausalLM.from_pretrained(export / "model")
    assert type(loaded) is SwaxForCausalLM
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key


def test_tied_embeddings_are_stored_once_and_tied_on_load(tmp_path):
    model = tiny_model(torch.float32, tie_word_embeddings=True)
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_the_window_can_be_overridden_at_load(export):
    """The evaluation window lives in config.sliding_window; from_pretrained(..., sliding_window=W)."""
    loaded = AutoModelForCausalLM.from_pretrained(export / "model", sliding_window=3)
    assert loaded.config.sliding_window == 3
    ids = torch.randint(1, 101, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_err(loaded(ids, use_cache=False).logits, ops_forward(loaded, ids, window=3)) < 2e-4
        cache = loaded(ids, use_cache=True).cache
    ring = next(layer for layer in cache.layers if getattr(layer, "is_sliding", False))
    assert ring.keys.shape[2] == 2


def test_bf16_load_generates_with_float32_states(export):
    loaded = AutoModelForCausalLM.from_pretrained(export / "model", dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    ids = torch.randint(1, 101, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = loaded.generate(ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    states = [layer.state for layer in out.cache.layers if hasattr(layer, "state")]
    assert states and all(t.dtype == torch.float32 for s in states for t in s)
    assert all(layer.keys.dtype == torch.bfloat16 for layer in out.cache.layers if hasattr(layer, "keys"))
