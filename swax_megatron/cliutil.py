"""What every command line of the package shares: a parser whose errors are one line with exit
code 2 (not argparse's usage block), and integer argument types. Imports nothing of the package
but exit_codes."""

from __future__ import annotations

import argparse
import sys

from .exit_codes import EXIT_BAD_INPUT


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = nonnegative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def first_line(e: BaseException, limit: int = 400) -> str:
    """The one line a user sees of an exception's message."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


def error_line(prog: str, e: BaseException) -> int:
    print(f"{prog}: error: {first_line(e)}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT
