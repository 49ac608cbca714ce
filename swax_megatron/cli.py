"""The `swax` command line.

    swax recipe resolve FILE [a.b=c ...] [--get run_dir|hash|name|world_size]
    swax recipe sweep FILE [a.b=c ...] (--count | --list | --index I)

A user error (a recipe typo, a bad override, a sweep index out of range) prints one line on
stderr and exits with status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .config.errors import RecipeError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _cmd_resolve(args) -> int:
    from .config.resolve import resolve

    r = resolve(args.recipe, args.overrides)
    if args.get:
        value = {"run_dir": r.run_dir, "hash": r.config_hash, "name": r.run_name,
                 "world_size": r.recipe.world_size}[args.get]
        print(value)
        return 0
    sys.stdout.write(r.to_yaml())
    return 0


def _cmd_sweep(args) -> int:
    from .config.resolve import resolve, resolve_sweep

    if args.index is not None:
        r = resolve(args.recipe, args.overrides, sweep_index=args.index)
        if args.get:
            print({"run_dir": r.run_dir, "hash": r.config_hash, "name": r.run_name,
                   "world_size": r.recipe.world_size}[args.get])
        else:
            sys.stdout.write(r.to_yaml())
        return 0
    entries = resolve_sweep(args.recipe, args.overrides)
    if args.count:
        print(len(entries))
        return 0
    for r in entries:
        index = r.sweep_entry.index if r.sweep_entry is not None else 0
        print(f"{index}\t{r.run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="swax", description="SWAX ablation framework on Megatron-core")
    sub = parser.add_subparsers(dest="group", required=True, parser_class=_Parser)
    recipe = sub.add_parser("recipe", help="resolve recipes and expand sweeps")
    rsub = recipe.add_subparsers(dest="command", required=True, parser_class=_Parser)

    res = rsub.add_parser("resolve", help="print the resolved recipe (YAML) and its hash")
    res.add_argument("recipe")
    res.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    res.add_argument("--get", choices=["run_dir", "hash", "name", "world_size"],
                     help="print only this value")
    res.set_defaults(func=_cmd_resolve)

    sw = rsub.add_parser("sweep", help="count, list or resolve the entries of a sweep")
    sw.add_argument("recipe")
    sw.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    mode = sw.add_mutually_exclusive_group(required=True)
    mode.add_argument("--count", action="store_true", help="number of entries")
    mode.add_argument("--list", action="store_true", help="index and run directory of each entry")
    mode.add_argument("--index", type=int, help="resolve entry I")
    sw.add_argument("--get", choices=["run_dir", "hash", "name", "world_size"],
                    help="with --index: print only this value")
    sw.set_defaults(func=_cmd_sweep)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RecipeError as e:
        print(f"swax: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
