"""Recipe loading: `base:` inheritance, dotted overrides, strict typing into the schema.

    recipe = load_recipe("recipes/tiny/swax.yaml", ["train.steps=50", "optim.lr=1e-3"])

Order of application: base files (depth first, in listed order), the file itself, a sweep entry's
values (see `sweep.py`), then command-line overrides. Dicts deep-merge; lists and scalars replace;
an explicit `null` sets None. Every value remembers where it came from ("file:line" or
"override `a.b=c`"), and every error names that origin, the dotted key and the problem.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

from .errors import RecipeError, did_you_mean, is_control, shorten
from .schema import Recipe
from .yaml_io import LocatedDict, Unusable, load_yaml, parse_value, yaml11_number

RESERVED_KEYS = ("base", "sweep")  # top-level keys that are not schema sections

Origins = Dict[str, str]  # dotted path -> "file:line" / "override `...`"


@dataclasses.dataclass
class RawRecipe:
    """The merged (still untyped) mapping of a recipe, with provenance."""

    data: Dict[str, Any]
    origins: Origins
    files: List[str]  # the inheritance chain, bases first
    sweep: Optional[Dict[str, Any]] = None


# --- reading files -----------------------------------------------------------------------------

def _record_origins(data: Any, prefix: str, source: str, origins: Origins) -> None:
    if isinstance(data, LocatedDict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else key
            origins[path] = f"{source}:{data.lines[key]}"
            _record_origins(value, path, source, origins)


def _drop_origins(origins: Origins, path: str) -> None:
    for key in [k for k in origins if k.startswith(path + ".")]:
        del origins[key]


def deep_merge(base: Dict[str, Any], over: Dict[str, Any], origins: Origins,
               over_origins: Origins, prefix: str = "") -> Dict[str, Any]:
    """`over` on top of `base`: dicts merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, origins, over_origins, path)
            if path in over_origins:
                origins.setdefault(path, over_origins[path])
        else:
            _drop_origins(origins, path)
            out[key] = copy.deepcopy(value)
            for k, v in over_origins.items():
                if k == path or k.startswith(path + "."):
                    origins[k] = v
    return out


# Far more than any recipe (a few KiB); bounds what `base: /dev/zero` or a mistyped path to a
# data file would read.
MAX_FILE_CHARS = 1 << 24


def _read_file(path: str) -> LocatedDict:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_FILE_CHARS + 1)
        if len(text) > MAX_FILE_CHARS:
            raise RecipeError(f"larger than {MAX_FILE_CHARS:,} characters: not a recipe", origin=path)
    except FileNotFoundError:
        raise RecipeError("recipe file not found", origin=path) from None
    except IsADirectoryError:
        raise RecipeError("is a directory, expected a recipe .yaml file", origin=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read recipe: {e}", origin=path) from None
    data = load_yaml(text, path)
    if data is None:
        data = LocatedDict()
        data.lines, data.source = {}, path
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe must be a mapping of sections, got {type(data).__name__}",
                          origin=path)
    return data


def read_raw(path: str, _stack: Tuple[str, ...] = ()) -> RawRecipe:
    """Read `path` and its `base:` chain into one merged mapping (not yet typed)."""
    real = os.path.realpath(path)
    if real in _stack:
        chain = " -> ".join(os.path.relpath(p) for p in _stack + (real,))
        raise RecipeError(f"`base:` inheritance cycle: {chain}", origin=path)
    data = _read_file(path)
    own_origins: Origins = {}
    _record_origins(data, "", path, own_origins)

    base_origin = own_origins.pop("base", path)
    bases = data.pop("base", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise RecipeError("`base` must be a path or a list of paths", path="base",
                          origin=base_origin)

    merged: Dict[str, Any] = {}
    origins: Origins = {}
    files: List[str] = []
    for b in bases:
        base_path = b if os.path.isabs(b) else os.path.join(os.path.dirname(path), b)
        if not os.path.exists(base_path):
            raise RecipeError(f"base recipe `{b}` not found (looked for {base_path})",
                              path="base", origin=base_origin)
        parent = read_raw(base_path, _stack + (real,))
        parent_data = dict(parent.data)
        if parent.sweep is not None:
            parent_data["sweep"] = parent.sweep
        merged = deep_merge(merged, parent_data, origins, parent.origins)
        files += [f for f in parent.files if f not in files]
    merged = deep_merge(merged, dict(data), origins, own_origins)
    files.append(path)
    sweep = merged.pop("sweep", None)
    if "sweep" in data and not sweep:
        # `sweep:` with nothing under it reads as null: it would silently be "no sweep".
        raise RecipeError("empty sweep block: give it grid, zip or seeds, or remove it",
                          path="sweep", origin=origins.get("sweep", path))
    return RawRecipe(data=merged, origins=origins, files=files, sweep=sweep)


# --- overrides ---------------------------------------------------------------------------------

def split_override(text: str) -> Tuple[str, str]:
    shown = shorten(text)
    if "=" not in text:
        raise RecipeError(f"override `{shown}` must look like dotted.key=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override `{shown}`: empty key segment in `{shorten(key)}`")
    if key.split(".")[0] in RESERVED_KEYS:
        raise RecipeError(f"override `{shown}`: `{key.split('.')[0]}` cannot be overridden")
    return key, value


def set_dotted(data: Dict[str, Any], key: str, value: Any, origin: str, origins: Origins) -> None:
    """Set `a.b.c` (or a list element `a.b.3`) in a nested dict, creating dicts on the way.

    A mapping value merges key by key into the mapping already there (as `base:` does), so
    `model.swa={}` changes nothing instead of resetting the section. Unknown keys are not caught
    here but by the typed construction, which knows the schema."""
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        path = ".".join(parts[:i + 1])
        at = _list_index(node, part, path, origin) if isinstance(node, list) else part
        node = _container_at(node, at, path, key, origin)
    parent = ".".join(parts[:-1])
    if isinstance(node, list):
        node[_list_index(node, parts[-1], key, origin)] = value
        _drop_origins(origins, key)
        origins[key] = origin
        return
    merged = deep_merge(node, {parts[-1]: value}, origins, _origins_within(value, key, origin), parent)
    node.clear()
    node.update(merged)


def _container_at(node: Any, part: Any, path: str, key: str, origin: str) -> Any:
    """The dict or list at `node[part]` on the way to `key`; a missing (or null) one becomes an
    empty dict, a scalar is an error (there is nothing to set `key` in)."""
    nxt = node.get(part) if isinstance(node, dict) else node[part]
    if nxt is None:
        nxt = node[part] = {}
    if not isinstance(nxt, (dict, list)):
        raise RecipeError(f"cannot set `{key}`: `{path}` is {_value_repr(nxt)}, not a section "
                          f"or a list", path=path, origin=origin)
    return nxt


def _origins_within(value: Any, path: str, origin: str) -> Origins:
    """`origin` for `path` and every key nested in a mapping `value`."""
    out = {path: origin}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_origins_within(v, f"{path}.{k}", origin))
    return out


def _list_index(node: list, part: str, path: str, origin: str) -> int:
    # [0-9] and a length bound: str.isdigit() also takes '²', and int() refuses 4,300 digits.
    if not re.fullmatch(r"[0-9]{1,9}", part):
        raise RecipeError(f"`{shorten(part)}` is not a list index (0..{len(node) - 1})", path=path,
                          origin=origin)
    if int(part) >= len(node):
        raise RecipeError(f"list index `{part}` out of range (list has {len(node)} items)",
                          path=path, origin=origin)
    return int(part)


def apply_overrides(raw: RawRecipe, overrides: Sequence[str]) -> None:
    for text in overrides:
        key, value_text = split_override(text)
        origin = f"override `{shorten(text)}`"
        set_dotted(raw.data, key, parse_value(value_text, origin), origin, raw.origins)


# --- typed construction ------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, List):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _value_repr(value: Any) -> str:
    if isinstance(value, Unusable):
        return f"unquoted `{value.shown}`"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {shorten(repr(value))}"


def _number_hint(value: Any, tp: Any) -> str:
    """For a string where a number belongs that YAML 1.1 would have read as one (`1:40`)."""
    old = yaml11_number(value) if isinstance(value, str) and tp in (int, float) else None
    if old is None:
        return ""
    return f" (YAML 1.1 would read {old}; recipes are YAML 1.2: write {old})"


def _check_text(value: str, path: str, origin: Optional[str]) -> str:
    """Recipe strings become paths, job names and command lines: no control characters."""
    bad = next((i for i, c in enumerate(value) if is_control(c)), None)
    if bad is not None:
        raise RecipeError(f"contains the control character {value[bad]!r} at position {bad}: "
                          f"recipe strings must be printable text", path=path, origin=origin)
    return str(value)


def coerce(value: Any, tp: Any, path: str, origins: Origins) -> Any:
    """Check `value` against annotation `tp`; return the typed value or raise RecipeError."""
    origin = _origin_of(path, origins)
    ann = typing.get_origin(tp)

    def fail(extra: str = ""):
        raise RecipeError(f"expected {_type_name(tp)}, got {_value_repr(value)}{extra}",
                          path=path, origin=origin)

    if isinstance(value, Unusable):
        if _accepts(tp, value.kind):
            hint = value.fix
        elif _accepts(tp, str):
            hint = f"quote it ('{value.shown}') if you mean the string"
        else:
            hint = f"expected {_type_name(tp)}"
        raise RecipeError(f"`{value.shown}` is {value.why}" + (f": {hint}" if hint else ""),
                          path=path, origin=origin)
    if ann in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            fail()
        errors = []
        # Try the most specific alternatives first so "1" stays an int in Union[int, str].
        for arg in sorted((a for a in args if a is not type(None)), key=_specificity):
            try:
                return coerce(value, arg, path, origins)
            except RecipeError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        fail()
    if value is None:
        fail()
    if ann is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        fail(did_you_mean(str(value), [str(c) for c in choices]))
    if ann in (list, List):
        if not isinstance(value, list):
            fail()
        (item_tp,) = typing.get_args(tp)
        return [coerce(v, item_tp, f"{path}.{i}", origins) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail()
        return build_dataclass(tp, value, path, origins)
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail(_number_hint(value, tp))
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # No recipe float means anything as NaN or infinity (null says "none" where allowed).
            if not math.isfinite(value):
                raise RecipeError(f"must be a finite number, got {value}", path=path, origin=origin)
            return float(value)
        fail(_number_hint(value, tp))
    if tp is str:
        if isinstance(value, str):
            return _check_text(value, path, origin)
        fail()
    raise TypeError(f"schema uses an unsupported annotation {tp!r} at {path}")


def _specificity(tp: Any) -> int:
    order = {bool: 0, int: 1, float: 2, str: 4}
    return order.get(tp, 3)


def _accepts(tp: Any, kind: type) -> bool:
    if tp is kind:
        return True
    return any(_accepts(a, kind) for a in typing.get_args(tp)) if typing.get_args(tp) else False


def _origin_of(path: str, origins: Origins) -> Optional[str]:
    while path:
        if path in origins:
            return origins[path]
        path = path.rpartition(".")[0]
    return None


def build_dataclass(cls: type, data: Dict[str, Any], prefix: str, origins: Origins) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            section = f"section `{prefix}`" if prefix else "a recipe"
            raise RecipeError(
                f"unknown key in {section}{did_you_mean(str(key), fields)}",
                path=path, origin=_origin_of(path, origins))
        kwargs[key] = coerce(value, hints[key], path, origins)
    return cls(**kwargs)


def build_recipe(raw: RawRecipe) -> Recipe:
    unknown = [k for k in raw.data if k in RESERVED_KEYS]
    if unknown:
        raise RecipeError(f"`{unknown[0]}` is only allowed at the top of a recipe file")
    recipe = build_dataclass(Recipe, raw.data, "", raw.origins)
    return recipe


def load_raw(path: str, overrides: Sequence[str] = ()) -> RawRecipe:
    raw = read_raw(path)
    apply_overrides(raw, overrides)
    return raw
