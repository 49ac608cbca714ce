"""Strict YAML reading for recipes.

PyYAML's SafeLoader has three traps for configuration files: a duplicate key silently keeps the
last value, `1e-3` is a string (YAML 1.1 wants `1.0e-3`), and `yes/no/on/off` are booleans. Here
duplicates are an error, any decimal or exponent number is a float, and `yes/no/on/off` stay
strings of type `Yaml11Bool` so the type checker can refuse them wherever they would be
ambiguous. Every mapping remembers the line of each key so errors can point at it.
"""

from __future__ import annotations

import re
from typing import Any, Dict

import yaml

from .errors import RecipeError


class Yaml11Bool(str):
    """An unquoted yes/no/on/off: a bool in YAML 1.1, a string in YAML 1.2. Refused by the checker."""


class LocatedDict(dict):
    """A mapping that knows the source line of each of its keys."""

    lines: Dict[str, int]
    source: str


class _StrictLoader(yaml.SafeLoader):
    pass


# Resolvers: replace bool (true/false only) and float (YAML 1.2 style, so 1e-3 is a float).
_StrictLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_StrictLoader.add_implicit_resolver(
    "!yaml11bool", re.compile(r"^(?:yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)$"), list("yYnNoO"))
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _construct_yaml11bool(loader, node):
    return Yaml11Bool(loader.construct_scalar(node))


_StrictLoader.add_constructor("!yaml11bool", _construct_yaml11bool)


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    out = LocatedDict()
    out.lines, out.source = {}, loader.name
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise RecipeError(f"keys must be strings, got {key!r}",
                              origin=f"{loader.name}:{key_node.start_mark.line + 1}")
        if key in out:
            raise RecipeError(
                f"duplicate key `{key}` (first at line {out.lines[key]}; YAML would silently keep "
                f"the last one)", origin=f"{loader.name}:{key_node.start_mark.line + 1}")
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document strictly; `source` names it in error messages."""
    loader = _StrictLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    except RecipeError:
        raise
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"invalid YAML: {problem}", origin=where) from None
    finally:
        loader.dispose()


def parse_value(text: str, source: str) -> Any:
    """A command-line override value, read as YAML (so `1e-3`, `[1, 2]`, `null` work)."""
    return load_yaml(text, source) if text.strip() else ""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(LocatedDict, yaml.representer.SafeRepresenter.represent_dict)
_Dumper.add_representer(Yaml11Bool, yaml.representer.SafeRepresenter.represent_str)


def _represent_list(dumper, data):
    # Lists of scalars on one line ([128, 2048]), anything nested in block style.
    flow = all(not isinstance(x, (dict, list)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
