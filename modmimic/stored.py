"""One set of rules for everything read back from disk that can name code: checkpoint configs, a run directory's
``config.yaml``, sweep job records, recipe names recorded in a run, and the JSON metadata inside datasets.

A stored file is data. Reading one:

* parses JSON or YAML with a safe parser, after checking its nesting depth (``MAX_DEPTH``) so a file nested 100 000
  levels deep is an error naming it, not a ``RecursionError``;
* refuses interpolation resolvers (``${oc.env:HOME}``, ``${oc.decode:...}``, any custom resolver) before anything
  could evaluate them: only plain ``${key}`` references and modmimic's own pure resolvers (``SAFE_RESOLVERS``) are
  kept;
* checks every dotted name (``_target_``, ``fn``) against the trusted modules (:mod:`modmimic.trust`: ``modmimic.*``,
  ``MODMIMIC_TRUSTED_MODULES`` and what the caller passes).

Every refusal is a :class:`StoredFileError` (a :class:`~modmimic.config.ConfigError`: exit status 2) naming the file
and the key.
"""
from __future__ import annotations

import json
import os
import re

from modmimic.config import ConfigError
from modmimic.trust import check_config_names, UntrustedNameError

MAX_DEPTH = 100  # nesting of a stored config or JSON attribute (modmimic's own configs nest fewer than 12 levels)
MAX_BYTES = 64 * 2**20  # a stored YAML or JSON text file larger than this is not a config
SAFE_RESOLVERS = ("minus",)  # modmimic's own resolvers: pure arithmetic on config values

_RESOLVER = re.compile(r"\$\{\s*([A-Za-z_][\w.\-]*)\s*:")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


class StoredFileError(ConfigError):
    """A stored file (checkpoint config, run directory, sweep record, dataset attribute) is refused or malformed."""


def json_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting of JSON ``text`` (strings skipped), without parsing it."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads_json(text, source: str, max_depth: int = MAX_DEPTH):
    """``json.loads(text)`` for stored JSON; too deep or invalid is a :class:`StoredFileError` naming ``source``."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise StoredFileError(f"{source} is not UTF-8 text ({e})") from None
    if not isinstance(text, str):
        raise StoredFileError(f"{source} must be a JSON string, got {type(text).__name__}")
    depth = json_depth(text)
    if depth > max_depth:
        raise StoredFileError(f"{source} is nested {depth} levels deep, more than the {max_depth} a stored config "
                              "may have")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise StoredFileError(f"{source} is not valid JSON ({' '.join(str(e).split())[:200]})") from None


def read_text(path: str, what: str = "file") -> str:
    """A stored text file that is a regular file (not a symlink, device or FIFO) of at most ``MAX_BYTES``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        if os.path.islink(path):
            raise StoredFileError(f"{path} is a symbolic link; a stored {what} is read only as a regular file"
                                  ) from None
        raise StoredFileError(f"{path} cannot be read ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        import stat

        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise StoredFileError(f"{path} is not a regular file")
        if st.st_size > MAX_BYTES:
            raise StoredFileError(f"{path} has {st.st_size} bytes, more than a stored {what} may have ({MAX_BYTES})")
        data = f.read(MAX_BYTES + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StoredFileError(f"{path} is not UTF-8 text ({e})") from None


def load_yaml(path: str, what: str = "config"):
    """A stored YAML file as plain Python (safe loader, nesting bounded); no interpolation is evaluated."""
    import yaml

    text = read_text(path, what)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise StoredFileError(f"{path} is not valid YAML ({' '.join(str(e).split())[:200]})") from None
    except RecursionError:
        raise StoredFileError(f"{path} is nested more than {MAX_DEPTH} levels deep") from None
    if node is not None and _yaml_depth(node) > MAX_DEPTH:
        raise StoredFileError(f"{path} is nested more than {MAX_DEPTH} levels deep")
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as e:
        raise StoredFileError(f"{path} is not valid YAML ({' '.join(str(e).split())[:200]})") from None


def _yaml_depth(node) -> int:
    import yaml

    stack, deepest = [(node, 1)], 0
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            return deepest
        if isinstance(n, yaml.SequenceNode):
            stack += [(c, d + 1) for c in n.value]
        elif isinstance(n, yaml.MappingNode):
            stack += [(v, d + 1) for _, v in n.value]
    return deepest


def _walk(node, path: str = "", depth: int = 0):
    """``(key path, value)`` of every leaf of a plain nested config (iteratively; depth checked)."""
    stack = [(node, path, depth)]
    while stack:
        n, p, d = stack.pop()
        if d > MAX_DEPTH:
            raise StoredFileError(f"key {p or '<root>'} is nested more than {MAX_DEPTH} levels deep")
        if isinstance(n, dict):
            stack += [(v, f"{p}.{k}" if p else str(k), d + 1) for k, v in n.items()]
        elif isinstance(n, (list, tuple)):
            stack += [(v, f"{p}[{i}]", d + 1) for i, v in enumerate(n)]
        else:
            yield p, n


def check_resolvers(cfg, source: str) -> None:
    """Refuse a stored config that uses an interpolation resolver other than ``SAFE_RESOLVERS`` (``oc.env``
    would read the environment, custom resolvers run code)."""
    for path, v in _walk(cfg):
        if isinstance(v, str) and "${" in v:
            for name in _RESOLVER.findall(v):
                if name not in SAFE_RESOLVERS:
                    raise StoredFileError(
                        f"{source}: key {path} uses the interpolation resolver {name!r}; a stored config is data, "
                        f"so only plain ${{key}} references and modmimic's own resolvers "
                        f"({', '.join(SAFE_RESOLVERS)}) are read from it")


def check_stored_config(cfg, source: str, modules) -> dict:
    """The rules above for a parsed stored config ``cfg`` (a dict); returns it. ``modules``: the trusted modules
    (:func:`modmimic.trust.stored_config_modules`)."""
    if not isinstance(cfg, dict):
        raise StoredFileError(f"{source} must hold a mapping (a config), got {type(cfg).__name__}")
    check_resolvers(cfg, source)
    try:
        check_config_names(cfg, modules, "its config")
    except UntrustedNameError as e:
        raise StoredFileError(f"{source}: refused: {e}") from None
    return cfg


def load_run_config(path: str, modules) -> dict:
    """A run directory's ``config.yaml`` under the stored-config rules, as plain Python."""
    return check_stored_config(load_yaml(path, "run config"), path, modules)
