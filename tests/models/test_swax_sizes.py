"""The paper's sizes, read from the recipes that train them (recipes/models/), counted on the meta
device (nothing allocated): SWAX-1.4B (24 x 2048) and SWAX-7B (32 x 4096) land within 10% of
1.4e9 and 7e9. Run with -s to see the breakdown."""

from pathlib import Path

import pytest
import torch

from swax_megatron.config.resolve import resolve
from swax_megatron.models.reference import ReferenceConfig, SwaxReference, parameter_breakdown

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "models"


@pytest.mark.parametrize("recipe,target,layers,hidden", [
    ("swax_1p4b.yaml", 1.4e9, 24, 2048), ("swax_7b.yaml", 7e9, 32, 4096)])
def test_paper_size_parameter_count(recipe, target, layers, hidden):
    cfg = ReferenceConfig.from_model_config(resolve(str(RECIPES / recipe)).recipe.model)
    assert (cfg.num_layers, cfg.hidden_size, cfg.layer_symbols) == (layers, hidden, "XS" * (layers // 2))
    with torch.device("meta"):
        model = SwaxReference(cfg)
    assert all(p.is_meta for p in model.parameters())
    counts = parameter_breakdown(model)
    line = "  ".join(f"{k} {v / 1e6:,.1f}M" for k, v in counts.items())
    print(f"\n{recipe}: {line}")
    assert abs(counts["total"] - target) / target < 0.10, f"{recipe}: {line}"
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    # 1:1 interleave at equal width: attention and mLSTM mixers are about the same size
    assert 0.9 < counts["mlstm"] / counts["attention"] < 1.1
