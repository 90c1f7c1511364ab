"""Recipe files: where recipes are found (the shipped ones, ``$MODMIMIC_RECIPE_PATH``, paths), their inheritance
(``defaults`` chains), optimizer defaults, hierarchical components grafted in, and presets. Plain YAML and OmegaConf,
no hydra: :mod:`modmimic.config` composes a recipe with the command line and validates the result.
"""
from __future__ import annotations

import importlib.resources
import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from modmimic.errors import ConfigError, closest

STRUCTURE_SECTIONS = ("batch", "nets", "targets", "prepare", "losses", "updates", "act", "value_fns", "requires",
                      "components")
DATA_REQUIREMENTS = ("rewards", "next_obs")  # what a recipe may declare under ``requires``


# ``${minus:a,b}`` = a - b: a recipe value derived from another (Diffusion Policy acts from chunk index To - 1)
OmegaConf.register_new_resolver("minus", lambda a, b: int(a) - int(b), replace=True)


def recipes_dir() -> Path:
    """The recipes shipped with modmimic."""
    return Path(str(importlib.resources.files("modmimic.recipes")))


def base_config_path() -> Path:
    return Path(str(importlib.resources.files("modmimic.conf"))) / "base.yaml"


RECIPE_PATH_ENV = "MODMIMIC_RECIPE_PATH"
_FILES: dict = {}  # recipe name -> the file it was loaded from (recipes given by path)


def recipe_dirs() -> list[Path]:
    """Where recipes are looked up by name: the folders of ``$MODMIMIC_RECIPE_PATH`` (``os.pathsep``-separated), in
    order, then the shipped recipes. A user's recipe of the same name as a shipped one wins."""
    extra = [Path(p).expanduser() for p in os.environ.get(RECIPE_PATH_ENV, "").split(os.pathsep) if p.strip()]
    return [*extra, recipes_dir()]


def is_recipe_path(recipe: str) -> bool:
    return str(recipe).endswith((".yaml", ".yml")) or os.sep in str(recipe) or "/" in str(recipe)


def find_recipe(recipe: str) -> Path:
    """The file of ``recipe``: a path to a ``.yaml`` file, or a name looked up in :func:`recipe_dirs`."""
    recipe = str(recipe)
    if is_recipe_path(recipe):
        path = Path(recipe).expanduser()
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {recipe}" + ("" if path.is_absolute()
                                                                    else f" (relative to {os.getcwd()})"))
        return path.resolve()
    if recipe in _FILES:
        return _FILES[recipe]
    for d in recipe_dirs():
        path = d / f"{recipe}.yaml"
        if path.is_file():
            return path
    raise ConfigError(f"unknown recipe {recipe!r}{closest(recipe, list_recipes())}; available recipes: "
                      f"{', '.join(list_recipes())} (a recipe may also be a path to a .yaml file, or live in a folder "
                      f"of ${RECIPE_PATH_ENV})")


def list_recipes() -> list[str]:
    """Every recipe name: the shipped ones and those in ``$MODMIMIC_RECIPE_PATH``."""
    names = set()
    for d in recipe_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def recipe_description(recipe: str) -> str:
    """A recipe's header comment up to its first blank or non-comment line, joined into one line."""
    lines = []
    try:
        with open(find_recipe(recipe)) as f:
            for line in f:
                if not line.startswith("#"):
                    break
                text = line.lstrip("#").strip()
                if not text or (lines and line.startswith("#  ")):
                    break
                lines.append(text)
    except (OSError, ConfigError):
        pass
    return " ".join(lines)


def check_recipe_name(recipe: str) -> None:
    find_recipe(recipe)


# --- presets: settings over any recipe ------------------------------------------------------------------------------
#
# A preset (``modmimic/conf/preset/<name>.yaml``) is a set of config values laid over a recipe before the command
# line's overrides: ``all`` applies to every recipe, ``recipes.<name>`` to a recipe and to the recipes that extend it
# (the nearest entry along the recipe's ``defaults`` chain wins: ``bc_rnn_gmm`` uses ``bc_rnn``'s entry unless it has
# its own). ``robomimic`` (the default) is empty: the recipes are robomimic's settings. The composed config records the
# preset's name under ``preset``.

DEFAULT_PRESET = "robomimic"


def presets_dir() -> Path:
    return base_config_path().parent / "preset"


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def check_preset_name(name) -> None:
    if str(name) not in list_presets():
        raise ConfigError(f"unknown preset {name!r}{closest(name, list_presets())}; available presets: "
                          f"{', '.join(list_presets())}")


def load_preset(name: str) -> DictConfig:
    check_preset_name(name)
    return OmegaConf.load(presets_dir() / f"{name}.yaml")


def preset_description(name: str) -> str:
    return str(load_preset(name).get("description") or "").strip()


def recipe_lineage(name: str, _stack=()) -> list[str]:
    """``name``'s recipe name followed by its parents' (depth first, nearest first), from the ``defaults`` lists."""
    path = find_recipe(name)
    if str(path) in _stack:
        return []
    raw = OmegaConf.load(path)
    own = raw.get("recipe_name") or path.stem
    out = [str(own)]
    for p in reversed([str(p) for p in (raw.get("defaults") or []) if str(p) != "_self_"]):
        if is_recipe_path(p) and not os.path.isabs(p):
            p = str(path.parent / p)
        out += [n for n in recipe_lineage(p, _stack + (str(path),)) if n not in out]
    return out


def preset_family(preset: str, recipe: str) -> str | None:
    """The recipe whose entry of ``preset`` applies to ``recipe`` (None: only the preset's ``all`` values)."""
    entries = load_preset(preset).get("recipes") or {}
    return next((n for n in recipe_lineage(recipe) if n in entries), None)


def preset_values(preset: str, recipe: str) -> DictConfig:
    """What ``preset`` lays over ``recipe``: its ``all`` values merged with the nearest ``recipes`` entry."""
    spec, family = load_preset(preset), preset_family(preset, recipe)
    return OmegaConf.merge(spec.get("all") or {}, spec.recipes[family] if family else {})


# --- recipe files: inheritance and shared defaults ------------------------------------------------------------------
#
# A recipe may extend others (``defaults: [bcq, _self_]``). Values (``algo``, ``train``, ``observation``, ...) merge
# key by key. In the structure sections (``nets``, ``targets``, ``losses``, ``value_fns``, ``batch``, ``act``) an
# entry whose builder (``_target_``) or function (``fn``) the recipe changes replaces its parent's entry whole (a
# variant that builds something else writes what it builds and never nulls out arguments it inherited); an entry
# with the same builder merges; ``<entry>: null`` removes one. Every ``algo.optim_params.<net>`` starts from
# ``modmimic/conf/optim_params.yaml`` (robomimic's optimizer block), so a recipe writes only what differs.

STRUCTURE_ENTRIES = ("nets", "targets", "losses", "value_fns")  # sections of named entries


def _builder(entry):
    return (entry.get("_target_") or entry.get("fn")) if isinstance(entry, dict) else None


def _merge_recipe(parent: DictConfig, child: DictConfig) -> DictConfig:
    """``child`` over ``parent`` (see above): a structure entry (or ``batch`` / ``act``) whose builder or function
    the child changes replaces the parent's entry whole; a null entry removes it."""
    child_c = OmegaConf.to_container(child, resolve=False)
    parent_c = OmegaConf.to_container(parent, resolve=False)
    for s in ("batch", "act"):
        if _builder(child_c.get(s)) not in (None, _builder(parent_c.get(s))):
            parent_c[s] = None
    for s in STRUCTURE_ENTRIES:
        mine, theirs = child_c.get(s) or {}, parent_c.get(s) or {}
        for name, entry in mine.items():
            if name in theirs and (entry is None or _builder(entry) not in (None, _builder(theirs[name]))):
                theirs[name] = None  # replaced in place: the networks keep their order (and initialisation)
    out = OmegaConf.merge(parent_c, child_c)
    for s in STRUCTURE_ENTRIES:
        if out.get(s) is not None:
            for name in [n for n, v in out[s].items() if v is None]:
                del out[s][name]
    return out


def optim_defaults() -> dict:
    return OmegaConf.to_container(OmegaConf.load(base_config_path().parent / "optim_params.yaml"))


def _with_optim_defaults(node: DictConfig) -> DictConfig:
    op = (node.get("algo") or {}).get("optim_params")
    if not op:
        return node
    defaults = optim_defaults()
    for name in list(op.keys()):
        if op[name] is not None:
            op[name] = OmegaConf.merge(defaults, op[name])
    return node


# --- hierarchical recipes: components ------------------------------------------------------------------------
#
# A hierarchical recipe references its sub-recipes by name and overrides only what differs:
#
#     components:
#       planner: {recipe: gl_vae, log_prefix: Planner}
#       actor:   {recipe: bc_rnn, log_prefix: Actor, batch: {fn: ...subgoal_sequence, ...}}
#
# ``expand_components`` grafts each sub-recipe in, the way robomimic nests its sub-algorithm configs: the sub-recipe's
# ``algo`` section becomes ``algo.<name>``, its ``observation`` section ``observation.<name>`` (every observation key
# not set by the sub-recipe follows the parent's ``observation.*``), and its structure (batch, nets, losses, updates,
# act, ...) ``components.<name>.*``. The sub-recipe's interpolations are re-rooted (``${algo.vae}`` ->
# ``${algo.<name>.vae}``), so a command-line override such as ``algo.planner.vae.kl_weight=0.5`` reaches every place
# the sub-recipe uses it. The parent's own values for these keys are merged over the grafted ones. ``train`` and
# ``experiment`` are shared, as in robomimic. Sub-recipes may be hierarchical themselves (IRIS: a value planner).

COMPONENT_KEYS = ("recipe", "algo_name", "log_prefix", "goal_shapes_from")  # besides the structure sections
_ROOTED = re.compile(r"\$\{(algo|observation)([.}])")


def reroot(node, name: str):
    """Interpolations ``${algo...}`` / ``${observation...}`` inside ``node`` (plain containers) moved under
    ``algo.<name>`` / ``observation.<name>``."""
    if isinstance(node, dict):
        return {k: reroot(v, name) for k, v in node.items()}
    if isinstance(node, list):
        return [reroot(v, name) for v in node]
    if isinstance(node, str):
        return _ROOTED.sub(lambda m: "${" + m.group(1) + "." + name + m.group(2), node)
    return node


def _follow_parent(node, prefix: str):
    """Every leaf of ``node`` replaced by an interpolation to the same key under ``prefix`` of the parent."""
    if isinstance(node, dict) and node:
        return {k: _follow_parent(v, f"{prefix}.{k}") for k, v in node.items()}
    return "${" + prefix + "}"


def recipe_node(name: str, _stack=()) -> DictConfig:
    """A recipe file with its ``defaults`` parents merged in (see above), optimizer defaults filled in and its
    components expanded (interpolations kept). ``name``: a recipe name or a path to a ``.yaml`` file."""
    path = find_recipe(name)
    if str(path) in _stack:
        raise ConfigError(f"recipe {name!r} includes itself through {' -> '.join(map(str, _stack + (path,)))}")
    raw = OmegaConf.load(path)
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"recipe file {path} is not a YAML mapping")
    parents = list(raw.pop("defaults", None) or [])
    if "_self_" not in parents:
        parents.append("_self_")
    node = OmegaConf.create()
    for p in parents:
        if p == "_self_":
            node = _merge_recipe(node, raw)
            continue
        p = str(p)
        if is_recipe_path(p) and not os.path.isabs(p):  # a parent path is relative to the recipe's folder
            p = str(path.parent / p)
        node = _merge_recipe(node, recipe_node(p, _stack + (str(path),)))
    node.recipe_name = raw.get("recipe_name") or path.stem  # its own name, never a parent's
    if is_recipe_path(name) or not (recipes_dir() / f"{name}.yaml").is_file():
        _FILES.setdefault(str(node.recipe_name), path)
    return expand_components(_with_optim_defaults(node), _stack + (str(path),))


def expand_components(node, _stack=()) -> DictConfig:
    """``node`` (a recipe) with every ``components.<name>: {recipe: <sub-recipe>, ...}`` grafted in (see above);
    ``requires`` becomes the union of the components'. A node without components is returned as is."""
    node = node if isinstance(node, DictConfig) else OmegaConf.create(node)
    comps = node.get("components")
    if not comps:
        return node
    base_obs = OmegaConf.to_container(OmegaConf.load(base_config_path()).observation, resolve=False)
    values = OmegaConf.to_container(node, resolve=False)
    own = values.pop("components")
    algo, obs, components = {}, {}, {}
    requires = list(values.get("requires") or [])
    for name, spec in own.items():
        if spec is None:
            continue
        if not isinstance(spec, dict) or not spec.get("recipe"):
            raise ConfigError(f"components.{name}: a component names its sub-recipe, e.g. "
                              f"components.{name}.recipe=bc_rnn")
        sub_name = str(spec["recipe"])
        try:
            find_recipe(sub_name)
        except ConfigError as e:
            raise ConfigError(f"components.{name}.recipe: {e}") from None
        sub = OmegaConf.to_container(recipe_node(sub_name, _stack), resolve=False)
        graft = {"recipe": sub_name, "algo_name": sub.get("algo_name"), "log_prefix": name}
        for s in STRUCTURE_SECTIONS:
            if s in sub:
                graft[s] = reroot(sub[s], name)
        components[name] = OmegaConf.merge(graft, spec)
        algo[name] = reroot(sub.get("algo") or {}, name)
        obs[name] = OmegaConf.merge(_follow_parent(base_obs, "observation"), reroot(sub.get("observation") or {}, name))
        requires += [r for r in (sub.get("requires") or []) if r not in requires]
    out = OmegaConf.merge({"algo": algo, "observation": obs}, values)
    out.components = components
    if requires:
        out.requires = requires
    return out


def _leaf_paths(node, prefix=""):
    if isinstance(node, DictConfig):
        for k in node.keys():
            yield from _leaf_paths(node._get_node(k), f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


def reference_config(recipe: str) -> DictConfig:
    """The base config merged with ``recipe`` (its parents and components included), without hydra: the keys and
    value types every composition of the recipe has. What key and type checks compare against."""
    return OmegaConf.merge(OmegaConf.load(base_config_path()), recipe_node(recipe))


def valid_keys(recipe: str) -> list[str]:
    """Every leaf key of :func:`reference_config` (the keys ``compose(recipe)`` has)."""
    return [p for p, _ in _leaf_paths(reference_config(recipe))]
