"""modmimic's error for bad configuration, and the "did you mean" hint its messages use. A module of its own so
that every layer (recipe variants, configuration, data, trust) can raise it without importing the others."""
from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A configuration is invalid: unknown key, wrong type, unknown recipe, or an inconsistent combination."""


def closest(name: str, options) -> str:
    m = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.5)
    return f" (did you mean {m[0]!r}?)" if m else ""
