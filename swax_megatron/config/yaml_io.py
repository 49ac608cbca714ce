"""Strict YAML reading for recipes: YAML 1.2 core-schema scalars, bounded documents.

PyYAML implements YAML 1.1, whose implicit types are traps in a configuration file: `0100` is
octal 64, `1:40` is the sexagesimal 100, `1_000` and `0b101` are integers, `yes/no/on/off` are
booleans, `2024-01-01` is a date, and `1e-3` is a string. Recipes are read with the YAML 1.2 core
schema instead:

    int    123, -7, 0o17 (octal), 0x1F (hex)
    float  1.5, 1e-3, .5, -1.5E+3, .inf, -.inf, .nan
    bool   true / false (True, TRUE, False, FALSE)
    null   null, ~, nothing
    str    everything else: 1:40, 1_000, 0b101, 24:00:00, 2024-01-01

Scalars that YAML 1.1 and 1.2 read as two different values are refused wherever they land
(`Unusable`): `yes/no/on/off` (booleans in 1.1) and leading-zero integers like `0100` (octal 64
in 1.1, 100 in 1.2). An integer outside the 64-bit range is refused the same way: no recipe field
holds one, and Python would not even print a 5,000-digit one.

A document is also bounded: aliases may not expand it by more than ALIAS_BUDGET nodes (a
"billion laughs" of nested aliases is a few hundred bytes), nor nest it deeper than MAX_DEPTH.
Duplicate keys are an error, and every mapping remembers the line of each key so errors can
point at it.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .errors import RecipeError, shorten

ALIAS_BUDGET = 10_000  # nodes that aliases may add to a document beyond what it spells out
MAX_DEPTH = 32  # nesting of mappings/sequences, aliases expanded (a recipe uses about 5)
INT64 = (-2**63, 2**63 - 1)  # the range of a recipe integer


class Unusable(str):
    """An unquoted scalar no recipe may use as written; the loader refuses it wherever it lands.

    `why` says what is wrong with it, `fix` how to write it for a field of type `kind`."""

    kind: type = object
    why: str = ""
    fix: str = ""

    @property
    def shown(self) -> str:
        """The scalar as written, cut short when it is long."""
        return shorten(self, 40)


class Yaml11Bool(Unusable):
    """An unquoted yes/no/on/off: a bool in YAML 1.1, a string in YAML 1.2."""

    kind = bool
    why = "ambiguous in YAML (a boolean in YAML 1.1)"
    fix = "use true/false"


class LeadingZeroInt(Unusable):
    """An unquoted integer with a leading zero: octal in YAML 1.1, decimal in YAML 1.2."""

    kind = int

    @property
    def why(self) -> str:
        digits = self.lstrip("+-")
        sign = -1 if self.startswith("-") else 1
        old = f"octal {sign * int(digits, 8)}" if set(digits) <= set("01234567") else "a string"
        return f"ambiguous in YAML ({old} in YAML 1.1, {int(self)} in YAML 1.2)"

    @property
    def fix(self) -> str:
        octal = "" if self.startswith("-") else f", or 0o{int(self):o} for octal"  # 1.2: unsigned
        return f"write {int(self)}{octal}"


class OutOfRangeInt(Unusable):
    """An unquoted integer outside the 64-bit range."""

    kind = int
    why = "out of range: a recipe integer is 64-bit"


class LocatedDict(dict):
    """A mapping that knows the source line of each of its keys."""

    lines: Dict[str, int]
    source: str


class _StrictLoader(yaml.SafeLoader):
    pass


def _core_schema_resolvers() -> Dict[Any, List[Tuple[str, Any]]]:
    """SafeLoader's implicit resolvers without YAML 1.1's bool, int, float, timestamp and `=`
    (null and the `<<` merge key stay); the YAML 1.2 ones are added below."""
    dropped = {f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float", "timestamp", "value")}
    return {k: [(tag, rx) for tag, rx in v if tag not in dropped]
            for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}


_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_YAML11_BOOL = re.compile(r"^(?:yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)$")
_LEADING_ZERO = re.compile(r"^[-+]?0[0-9]+$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
                       |[-+]?\.(?:inf|Inf|INF)
                       |\.(?:nan|NaN|NAN))$""", re.X)

_StrictLoader.yaml_implicit_resolvers = _core_schema_resolvers()
# Resolvers are tried in the order added: an int is an int before the float pattern (which also
# matches digits) sees it, and a leading-zero integer is caught before both.
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
_StrictLoader.add_implicit_resolver("!yaml11bool", _YAML11_BOOL, list("yYnNoO"))
_StrictLoader.add_implicit_resolver("!leadingzero", _LEADING_ZERO, list("-+0"))
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _scalar(loader, node, pattern: re.Pattern, what: str) -> str:
    """The text of a scalar node, which must match `pattern`: an implicit one always does, an
    explicitly tagged one (`!!int abc`) may not."""
    text = loader.construct_scalar(node)
    if not pattern.match(text):
        raise yaml.constructor.ConstructorError(
            None, None, f"`{shorten(text, 40)}` is not a YAML 1.2 {what}", node.start_mark)
    return text


def _too_long(text: str) -> bool:
    # 0o + 21 digits hold any 64-bit value; never convert more (Python refuses 4,300 digits).
    return len(text.lstrip("+-")) > 24


def _construct_int(loader, node):
    text = _scalar(loader, node, _INT, "integer")
    if _too_long(text):
        return OutOfRangeInt(text)
    digits = text.lstrip("+-")
    if digits.startswith(("0o", "0x")):
        value = int(digits[2:], 8 if digits[1] == "o" else 16)
    else:
        value = int(text, 10)
    return value if INT64[0] <= value <= INT64[1] else OutOfRangeInt(text)


def _construct_float(loader, node):
    _scalar(loader, node, _FLOAT, "float")
    return loader.construct_yaml_float(node)


def _construct_bool(loader, node):
    return _scalar(loader, node, _BOOL, "boolean (true or false)").lower() == "true"


def _construct_leading_zero(loader, node):
    text = loader.construct_scalar(node)
    return OutOfRangeInt(text) if _too_long(text) else LeadingZeroInt(text)


def _refuse_tag(loader, node):
    raise yaml.constructor.ConstructorError(
        None, None, f"tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not a recipe type "
        f"(strings, numbers, booleans, null, lists and mappings)", node.start_mark)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_StrictLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
_StrictLoader.add_constructor(
    "!yaml11bool", lambda loader, node: Yaml11Bool(loader.construct_scalar(node)))
_StrictLoader.add_constructor("!leadingzero", _construct_leading_zero)
for _tag in ("binary", "timestamp", "set", "omap", "pairs"):  # YAML 1.1 types
    _StrictLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)


def _construct_mapping(loader, node, deep=False):
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(
            None, None, f"expected a mapping node, but found {node.id}", node.start_mark)
    loader.flatten_mapping(node)
    out = LocatedDict()
    out.lines, out.source = {}, loader.name
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        where = f"{loader.name}:{key_node.start_mark.line + 1}"
        if isinstance(key, Unusable):
            raise RecipeError(f"key `{key.shown}` is {key.why}: quote it", origin=where)
        if not isinstance(key, str):
            raise RecipeError(f"keys must be strings, got {shorten(repr(key), 40)}", origin=where)
        if key in out:
            raise RecipeError(
                f"duplicate key `{key}` (first at line {out.lines[key]}; YAML would silently keep "
                f"the last one)", origin=where)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _children(node: yaml.Node) -> List[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def expanded_size(root: yaml.Node) -> Tuple[int, int, int]:
    """(nodes, distinct nodes, depth) of a composed document with every alias expanded.

    An alias is the same node object reached twice, so sizes are memoised per node: linear in
    the distinct nodes however large the expansion. Raises ValueError on a recursive alias."""
    size: Dict[int, int] = {}
    depth: Dict[int, int] = {}
    open_: set = set()  # nodes whose subtree is being walked: the ancestors of the current node
    stack: List[Tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            open_.discard(key)
        elif key not in size:
            if key in open_:
                raise ValueError(f"alias at line {node.start_mark.line + 1} refers to a node "
                                 f"that contains it (a recursive structure)")
            open_.add(key)
            stack.append((node, True))
            stack.extend((k, False) for k in _children(node))
    return size[id(root)], len(size), depth[id(root)]


def _check_bounds(node: yaml.Node, source: str) -> None:
    try:
        total, distinct, depth = expanded_size(node)
    except ValueError as e:
        raise RecipeError(f"invalid YAML: {e}", origin=source) from None
    if total - distinct > ALIAS_BUDGET:
        raise RecipeError(f"YAML aliases expand the document to {total:,} nodes from {distinct:,} "
                          f"written (at most {ALIAS_BUDGET:,} more are allowed)", origin=source)
    if depth > MAX_DEPTH:
        raise RecipeError(f"the document nests {depth} levels deep (at most {MAX_DEPTH})",
                          origin=source)


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document strictly; `source` names it in error messages."""
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader refuses control characters here
        loader.name = source
        node = loader.get_single_node()
        if node is None:
            return None
        _check_bounds(node, source)
        return loader.construct_document(node)
    except RecipeError:
        raise
    except yaml.reader.ReaderError as e:  # a control character or an invalid code point
        line = text.count("\n", 0, e.position) + 1
        shown = repr(chr(e.character)) if isinstance(e.character, int) else "a byte"
        raise RecipeError(f"invalid YAML: unacceptable character {shown} (recipes must be printable "
                          f"text)", origin=f"{source}:{line}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"invalid YAML: {problem}", origin=where) from None
    except RecursionError:  # the composer recurses once per level, before _check_bounds runs
        raise RecipeError(f"the document nests more than {MAX_DEPTH} levels deep",
                          origin=source) from None
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        # PyYAML's own constructors (merge keys, explicit tags): still one line, never a traceback.
        raise RecipeError(f"invalid YAML: {shorten(str(e), 120)}", origin=source) from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_value(text: str, source: str) -> Any:
    """A command-line override value, read as YAML (so `1e-3`, `[1, 2]`, `null` work)."""
    return load_yaml(text, source) if text.strip() else ""


def yaml11_number(text: str) -> Optional[Any]:
    """The number YAML 1.1 reads from a plain scalar that YAML 1.2 reads as a string
    (`1:40` -> 100, `1_000` -> 1000, `0b101` -> 5), else None: for hints in type errors."""
    if len(text) > 40 or not re.fullmatch(r"[-+0-9_.:a-fA-FxXbBoO]+", text):
        return None
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError):
        return None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class _Dumper(yaml.SafeDumper):
    pass


# A string is written plain only if neither YAML 1.2 (this loader) nor YAML 1.1 (other tools) would
# read it as something else: so `0o17`, `1e3` and `24:00:00` come out quoted.
_Dumper.yaml_implicit_resolvers = {
    k: _StrictLoader.yaml_implicit_resolvers.get(k, []) + yaml.SafeDumper.yaml_implicit_resolvers.get(k, [])
    for k in set(_StrictLoader.yaml_implicit_resolvers) | set(yaml.SafeDumper.yaml_implicit_resolvers)}
_Dumper.add_representer(LocatedDict, yaml.representer.SafeRepresenter.represent_dict)
_Dumper.add_multi_representer(Unusable, yaml.representer.SafeRepresenter.represent_str)


def _represent_list(dumper, data):
    # Lists of scalars on one line ([128, 2048]), anything nested in block style.
    flow = all(not isinstance(x, (dict, list)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
