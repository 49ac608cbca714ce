"""The one exception type recipe handling raises: its message is the single line a user sees."""

from __future__ import annotations

import difflib
import unicodedata
from typing import Iterable, Optional


def printable(text: str) -> str:
    """`text` with control characters and line breaks escaped (`\\x07`, `\\n`): a message that
    quotes a bad input must stay one line and must not drive the terminal."""
    return "".join(repr(c)[1:-1] if is_control(c) else c for c in text)


def is_control(char: str) -> bool:
    """A control character (C0, DEL, C1), a Unicode line/paragraph separator, or a lone surrogate
    (which no file name, terminal or UTF-8 file can hold)."""
    return unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs")


def shorten(text: str, limit: int = 80) -> str:
    """`text` cut to about `limit` characters, so a 5,000-character input quotes as one short line."""
    return text if len(text) <= limit else f"{text[:limit - 20]}...{text[-12:]} ({len(text)} characters)"


class RecipeError(ValueError):
    """A problem with a recipe, an override or a sweep; `str(err)` is one line for the user."""

    def __init__(self, message: str, path: Optional[str] = None, origin: Optional[str] = None):
        self.path, self.origin, self.problem = path, origin, message
        where = ": ".join(x for x in (origin, path) if x)
        super().__init__(printable(f"{where}: {message}" if where else message))


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean `a`, `b`?)' or '' when nothing is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    if not matches:
        return ""
    return " (did you mean " + ", ".join(f"`{m}`" for m in matches) + "?)"
