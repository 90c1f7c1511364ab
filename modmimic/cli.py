"""``key=value`` command lines of the small CLIs (eval, export, serve): parsed against a spec
``{key: (type, default, help)}``, each problem an :class:`ArgumentError` (exit status 2)."""
from __future__ import annotations


class ArgumentError(ValueError):
    """A command-line argument that is unknown, malformed or of the wrong type."""


def convert(key: str, text: str, spec: dict):
    """``text`` as the type ``spec[key]`` declares (``null``/``none``/``~``: None), or an :class:`ArgumentError`."""
    typ = spec[key][0]
    if text.lower() in ("null", "none", "~"):
        return None
    if typ is bool:
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise ArgumentError(f"{key} must be true or false, got {text!r}")
    try:
        return typ(text)
    except ValueError:
        raise ArgumentError(f"{key} must be {typ.__name__}, got {text!r}") from None


def parse_kv(argv: list[str], spec: dict, prog: str) -> dict:
    """``key=value`` arguments against ``spec`` (``{key: (type, default, help)}``): the defaults updated; unknown
    keys name the closest known one. Shared by the CLIs that take ``key=value`` (eval, export, serve)."""
    import difflib

    out = {k: d for k, (_, d, _) in spec.items()}
    for a in argv:
        if "=" not in a:
            if a.lstrip("-") in spec and spec[a.lstrip("-")][0] is bool:
                out[a.lstrip("-")] = True
                continue
            raise ArgumentError(f"arguments are key=value, got {a!r} (python -m {prog} --help lists them)")
        key, value = a.split("=", 1)
        key = key.lstrip("-").strip()
        if key not in spec:
            close = difflib.get_close_matches(key, list(spec), n=1)
            raise ArgumentError(f"unknown argument {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                                + f"; known: {', '.join(spec)}")
        out[key] = convert(key, value, spec)
    return out
