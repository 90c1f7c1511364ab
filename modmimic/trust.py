"""Which modules a dotted name in a config (``_target_``, ``fn``) may be imported from.

A config composed from the command line or from recipes names what the user chose: every name resolves. A config
read back from a file a user hands in (a checkpoint's recipe, a run directory's ``models/last.pth`` on resume) is
data, not code: its names resolve only inside ``modmimic.*``, plus the modules listed in the environment variable
``MODMIMIC_TRUSTED_MODULES=pkg1,pkg2`` or passed explicitly (``policy_from_checkpoint(..., trusted_modules=[...])``).

Code that builds an algorithm from a stored config does so inside ``with trusting(stored_config_modules(extra))``;
:func:`resolve` checks every name against the innermost such scope (no scope: everything is trusted). Both the
module path and the imported object's own ``__module__`` must be trusted, so a trusted module cannot re-export a
foreign callable (``modmimic.x.system`` where ``x`` did ``from os import system``).
"""
from __future__ import annotations

import importlib
import os
from contextlib import contextmanager
from contextvars import ContextVar

from modmimic.config import ConfigError

ENV_VAR = "MODMIMIC_TRUSTED_MODULES"
BUILTIN = ("modmimic",)
NAME_KEYS = ("_target_", "fn")  # config keys whose value is a dotted name that gets imported

_SCOPE: ContextVar = ContextVar("modmimic_trusted_modules", default=None)  # None: trust every module


class UntrustedNameError(ConfigError):
    """A stored config names a callable outside the trusted modules."""


def env_modules() -> tuple[str, ...]:
    return tuple(m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip())


def stored_config_modules(extra=None) -> tuple[str, ...]:
    """The modules a stored config may name: modmimic, ``MODMIMIC_TRUSTED_MODULES`` and ``extra``."""
    if isinstance(extra, str):
        extra = [extra]
    return tuple(dict.fromkeys([*BUILTIN, *env_modules(), *(str(m).strip() for m in (extra or ()) if str(m).strip())]))


def is_trusted(name: str, modules) -> bool:
    """``name`` is one of ``modules`` or inside one (``None``: every name is)."""
    if modules is None:
        return True
    name = str(name)
    return any(name == m or name.startswith(m + ".") for m in modules)


@contextmanager
def trusting(modules):
    """Resolve names inside this block only from ``modules`` (``None``: from anywhere)."""
    token = _SCOPE.set(None if modules is None else tuple(modules))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def current_modules():
    return _SCOPE.get()


def untrusted_message(name: str, modules, where: str = "") -> str:
    return (f"{where + ' ' if where else ''}names {name!r}, which is outside the trusted modules "
            f"({', '.join(modules)}): names in a stored config (checkpoint, run directory) resolve only inside "
            f"modmimic; if you trust the file, add the module to {ENV_VAR}=pkg1,pkg2 or pass trusted_modules=")


def resolve(path: str, trusted="scope"):
    """Import ``package.module.attr``. ``trusted``: the modules it may come from (``"scope"``: the current
    :func:`trusting` scope; ``None``: any)."""
    modules = current_modules() if isinstance(trusted, str) and trusted == "scope" else trusted
    path = str(path)
    if not is_trusted(path, modules):
        raise UntrustedNameError(untrusted_message(path, modules))
    mod, _, attr = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"cannot import {path!r}: {e}") from None
    if modules is not None:
        origin = obj.__name__ if type(obj).__name__ == "module" else getattr(obj, "__module__", None)
        if origin is None or not is_trusted(origin, modules):
            raise UntrustedNameError(untrusted_message(path, modules) + f" (it is {origin or type(obj).__name__}'s)")
    return obj


def config_names(node, prefix: str = ""):
    """``(key path, name)`` of every ``_target_`` / ``fn`` entry in a plain nested config."""
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if k in NAME_KEYS and isinstance(v, str):
                yield path, v
            else:
                yield from config_names(v, path)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from config_names(v, f"{prefix}[{i}]")


def check_config_names(config: dict, modules, where: str = "config") -> None:
    """Raise :class:`UntrustedNameError` naming the first key of ``config`` whose name is not trusted."""
    for key, name in config_names(config):
        if not is_trusted(name, modules):
            raise UntrustedNameError(untrusted_message(name, modules, f"{where} key {key}"))
