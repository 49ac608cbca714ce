"""From a recipe path (+ overrides, + sweep index) to a typed, validated, hashed recipe.

    r = resolve("recipes/tiny/swax.yaml", ["train.steps=50"])
    r.recipe.model.hidden_size, r.config_hash, r.run_dir
    write_resolved(r)   # creates the run directory and writes resolved.yaml atomically
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..files import atomic_write
from . import loader
from .errors import RecipeError
from .schema import HASH_EXCLUDED, Recipe, default_ffn_hidden_size
from .sweep import SweepEntry, expand_sweep
from .validate import validate
from .yaml_io import dump_yaml


@dataclass
class Resolved:
    recipe: Recipe
    config_hash: str
    files: List[str]
    overrides: List[str]
    origins: Dict[str, str]
    sweep_entry: Optional[SweepEntry] = None
    sweep_count: int = 0

    @property
    def run_name(self) -> str:
        return f"{self.recipe.run.name}-{self.config_hash[:8]}"

    @property
    def run_dir(self) -> str:
        return os.path.join(self.recipe.run.output_root, self.run_name)

    @property
    def checkpoint_dir(self) -> str:
        """Where the run's checkpoints (and `latest`) live: checkpoint.dir, else <run_dir>/checkpoints."""
        return self.recipe.checkpoint.dir or os.path.join(self.run_dir, "checkpoints")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self.recipe)

    def to_yaml(self) -> str:
        head = [f"# config_hash: {self.config_hash}", f"# run_dir: {self.run_dir}",
                f"# files: {', '.join(self.files)}"]
        if self.overrides:
            head.append(f"# overrides: {' '.join(self.overrides)}")
        if self.sweep_entry is not None:
            head.append(f"# sweep entry {self.sweep_entry.index} of {self.sweep_count}")
        return "\n".join(head) + "\n" + dump_yaml(self.to_dict())


def fill_derived(recipe: Recipe) -> None:
    """Write out defaults that follow from other fields, so resolved.yaml shows real sizes and
    a recipe that spells them out hashes the same as one that leaves them to the default."""
    m = recipe.model
    if m.num_query_groups is None:
        m.num_query_groups = m.num_attention_heads
    if m.ffn_hidden_size is None:
        m.ffn_hidden_size = default_ffn_hidden_size(m.hidden_size)


def hashed_fields(recipe: Recipe | Dict[str, Any]) -> Dict[str, Any]:
    """The part of a recipe (a Recipe, or its dataclasses.asdict form) the config hash covers:
    everything but the run-local fields (HASH_EXCLUDED)."""
    data = copy.deepcopy(recipe if isinstance(recipe, dict) else dataclasses.asdict(recipe))
    for path in HASH_EXCLUDED:
        node, parts = data, path.split(".")
        for part in parts[:-1]:
            node = node.get(part, {})
        node.pop(parts[-1], None)
    return data


def config_hash(recipe: Recipe) -> str:
    """sha256 of the canonical resolved recipe without the run-local fields (HASH_EXCLUDED)."""
    text = json.dumps(hashed_fields(recipe), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def hash_diff(a: Recipe | Dict[str, Any], b: Recipe | Dict[str, Any]) -> List[str]:
    """The dotted keys whose hashed values differ between two recipes, as `key: A -> B`."""
    out: List[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y)):
                walk(x.get(key), y.get(key), f"{prefix}.{key}" if prefix else key)
        elif x != y:
            out.append(f"{prefix}: {x!r} -> {y!r}")

    walk(hashed_fields(a), hashed_fields(b), "")
    return out


def _build(raw: loader.RawRecipe, overrides: Sequence[str], entry: Optional[SweepEntry],
           count: int) -> Resolved:
    raw = copy.deepcopy(raw)
    # Start from the schema defaults so an override can index into a default list.
    origins = dict(raw.origins)
    raw.data = loader.deep_merge(dataclasses.asdict(Recipe()), raw.data, {}, {})
    raw.origins = origins
    if entry is not None:
        swept = {k for k, _ in entry.values}
        for text in overrides:
            key, _ = loader.split_override(text)
            clash = [s for s in swept if s == key or s.startswith(key + ".") or key.startswith(s + ".")]
            if clash:
                raise RecipeError(f"override `{text}` conflicts with swept key `{clash[0]}`")
        for key, value in entry.values:
            loader.set_dotted(raw.data, key, copy.deepcopy(value), f"sweep entry {entry.index}",
                              raw.origins)
    loader.apply_overrides(raw, overrides)
    recipe = loader.build_recipe(raw)
    if entry is not None and entry.suffix:
        recipe.run.name = f"{recipe.run.name}__{entry.suffix}"
    fill_derived(recipe)
    validate(recipe, raw.origins)
    return Resolved(recipe=recipe, config_hash=config_hash(recipe), files=raw.files,
                    overrides=list(overrides), origins=raw.origins, sweep_entry=entry,
                    sweep_count=count)


def resolve(path: str, overrides: Sequence[str] = (), sweep_index: Optional[int] = None) -> Resolved:
    """Resolve a recipe; with `sweep_index`, entry i of its sweep block. A recipe with a sweep
    block needs the index: without it, it would silently train the un-swept base recipe."""
    raw = loader.read_raw(path)
    if raw.sweep is None:
        if sweep_index is not None:
            raise RecipeError("recipe has no sweep block", origin=path)
        return _build(raw, overrides, None, 0)
    entries = expand_sweep(raw.sweep, raw.origins)
    if sweep_index is None:
        raise RecipeError(
            f"recipe has a sweep block of {len(entries)} entries: choose one with `swax recipe "
            f"sweep {path} --index I` (the trainer's and `swax slurm job-env`'s --sweep-index I), "
            f"or run them all with `swax sweep submit {path}`", origin=path)
    if not 0 <= sweep_index < len(entries):
        raise RecipeError(f"sweep index {sweep_index} out of range: the sweep has {len(entries)} "
                          f"entries (0..{len(entries) - 1})", origin=path)
    return _build(raw, overrides, entries[sweep_index], len(entries))


def resolve_sweep(path: str, overrides: Sequence[str] = ()) -> List[Resolved]:
    """Every entry of the recipe's sweep, each validated (a recipe without a sweep is one entry)."""
    raw = loader.read_raw(path)
    if raw.sweep is None:
        return [_build(raw, overrides, None, 1)]
    entries = expand_sweep(raw.sweep, raw.origins)
    out = []
    for entry in entries:
        try:
            out.append(_build(raw, overrides, entry, len(entries)))
        except RecipeError as e:
            raise RecipeError(f"sweep entry {entry.index} ({entry.suffix}): {e}") from None
    names = [r.run_name for r in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise RecipeError(f"sweep entries resolve to the same run: {sorted(dup)[0]}", origin=path)
    return out


def write_resolved(resolved: Resolved) -> str:
    """Create the run directory and write resolved.yaml; returns the run directory."""
    os.makedirs(resolved.run_dir, exist_ok=True)
    atomic_write(os.path.join(resolved.run_dir, "resolved.yaml"), resolved.to_yaml())
    return resolved.run_dir
