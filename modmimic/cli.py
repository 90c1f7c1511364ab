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


def usage_text(prog: str, synopsis: str, description: str, spec: dict, exit_status: str) -> str:
    """A ``key=value`` CLI's ``--help``: ``usage: python -m <prog> <synopsis>``, the description, one line per
    argument of ``spec`` (its help and default) and the exit statuses."""
    width = max(len(k) for k in spec)
    lines = "\n".join(f"  {k.ljust(width)}  {h}" + (f" (default {d})" if d is not None else "")
                      for k, (_, d, h) in spec.items())
    return (f"usage: python -m {prog} {synopsis}\n\n{description}\n\narguments:\n{lines}\n\n"
            f"Exit status: {exit_status}")


EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130


def report(e: BaseException, prog: str, labels=(), failure: str = "failed", interrupted=("interrupted.", 130)) -> int:
    """Print one line on stderr for ``e`` and return the exit status: ``labels`` (``[(exception class, label)]``,
    checked in order) and :class:`ArgumentError` are bad input (2); Ctrl-C is ``interrupted`` (message, status);
    anything else is a failure (1) naming where it was raised. ``MODMIMIC_DEBUG=1`` prints the traceback first."""
    import os
    import sys
    import traceback

    if os.environ.get("MODMIMIC_DEBUG", "0") not in ("0", ""):
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    label = next((text for cls, text in labels if isinstance(e, cls)), None)
    if isinstance(e, KeyboardInterrupt):
        (msg, code) = interrupted
    elif isinstance(e, ArgumentError):
        msg, code = f"{e} (python -m {prog} --help lists the arguments)", EXIT_BAD_INPUT
    elif label is not None:
        msg, code = f"{label}: {' '.join(str(e).split())}", EXIT_BAD_INPUT
    else:
        tb = traceback.extract_tb(e.__traceback__)
        at = f" (raised at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno} in {tb[-1].name})" if tb else ""
        msg, code = f"{failure} with {type(e).__name__}: {' '.join(str(e).split())[:500]}{at}", EXIT_FAILURE
    print(f"{prog}: {msg}", file=sys.stderr, flush=True)
    return code


def run_main(argv, usage, body, report) -> int:
    """A ``key=value`` CLI's ``main``: ``--help`` prints ``usage()``; otherwise ``body(argv)`` gives the exit status
    and every failure becomes ``report(exception)``'s one line and status (``SystemExit`` passes through)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage())
        return 0
    try:
        return body(argv)
    except BaseException as e:  # noqa: BLE001 - every failure becomes a message and an exit status
        if isinstance(e, SystemExit):
            raise
        return report(e)
