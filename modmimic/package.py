"""Checks of the installed package itself."""
from __future__ import annotations

from modmimic.errors import ConfigError


def check_package() -> None:
    """A folder named ``modmimic`` in the working directory (e.g. the directory above a clone) shadows the installed
    package as a namespace package, which imports modules but lacks the package's attributes; say so."""
    import modmimic

    if getattr(modmimic, "__file__", None) is None or not hasattr(modmimic, "__version__"):
        where = ", ".join(getattr(modmimic, "__path__", []) or ["?"])
        raise ConfigError(f"'modmimic' is imported as a namespace package from {where}, not as the installed package: "
                          "a folder named modmimic/ (probably the clone itself) in the current directory or on "
                          "PYTHONPATH shadows it. Run from another directory, e.g. cd into the clone")
