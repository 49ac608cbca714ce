"""The one exception type recipe handling raises: its message is the single line a user sees."""

from __future__ import annotations

import difflib
from typing import Iterable, Optional


class RecipeError(ValueError):
    """A problem with a recipe, an override or a sweep; `str(err)` is one line for the user."""

    def __init__(self, message: str, path: Optional[str] = None, origin: Optional[str] = None):
        self.path, self.origin, self.problem = path, origin, message
        where = ": ".join(x for x in (origin, path) if x)
        super().__init__(f"{where}: {message}" if where else message)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean `a`, `b`?)' or '' when nothing is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    if not matches:
        return ""
    return " (did you mean " + ", ".join(f"`{m}`" for m in matches) + "?)"
