"""robomimic JSON experiment configs in and out.

``python -m modmimic.train config=<experiment.json> [key=value ...]`` trains a config written by robomimic's own
``Config`` classes (``config.dump()``, robomimic 0.3 and 0.5, the files under ``exps/templates/`` and those its
scripts generate). modmimic's config keys already follow robomimic's sections (``experiment``, ``train``, ``algo``,
``observation``, ``meta``), so a JSON maps to:

* a recipe, chosen from ``algo_name`` and the ``algo`` flags exactly as :func:`modmimic.algo.algo_factory` does
  (``bc`` with ``rnn.enabled`` and ``gmm.enabled`` is ``bc_rnn_gmm``; ``bcq`` with ``critic.distributional.enabled``
  is ``bcq_distributional``; ...), the flags read from the algo name's base recipe with the JSON's ``algo`` laid over;
* one hydra override per JSON leaf (``algo.rnn.hidden_dim=400``), placed before the command line's own overrides so
  those win; ``dataset=``/``train.data=`` on the command line replaces the JSON's ``train.data``.

Keys the JSON leaves out keep the recipe's values (robomimic's defaults for that variant). Empty kwargs dicts
(``core_kwargs: {}``) mean the class defaults in robomimic and keep modmimic's (the same values). A JSON key
modmimic has no setting for is an error naming it (:class:`~modmimic.config.ConfigError`, exit status 2), except the
few robomimic keys listed in :data:`ROBOMIMIC_ONLY` at the value that changes nothing. The JSON is a stored file:
read with :func:`modmimic.stored.read_text`/:func:`~modmimic.stored.loads_json` (regular file, bounded size and
nesting); it may not name code (``fn``/``_target_`` keys) nor hold interpolations (``${...}``).

:func:`to_robomimic` writes the reverse (``python -m modmimic.recipe export <recipe> --robomimic``): a config's
robomimic sections in robomimic's layout, without modmimic's own keys (:data:`MODMIMIC_ONLY`); those not at the
value robomimic behaves as are returned so the caller can say they were left out.
"""
from __future__ import annotations

import copy
import fnmatch
import functools
import math
import re

from modmimic.config import ConfigError, closest

_DICT_KEY = re.compile(r"[A-Za-z_][\w/\-+.@]*")
SECTIONS = ("experiment", "train", "algo", "observation", "meta")  # robomimic's config sections
_ANY = object()

# robomimic keys modmimic has no setting for: accepted at the value (or values) that changes nothing
ROBOMIMIC_ONLY = {
    "experiment.mse": ({},),  # an empty section in robomimic 0.5's bc_transformer template
    "*optim_params.*.learning_rate.num_cycles": (0.5,),  # cosine schedule: modmimic's is the half cycle
}
# per algo name: sections robomimic keeps but ignores (or rewrites) for that algorithm
ROBOMIMIC_ONLY_BY_ALGO = {
    # robomimic's IRIS asserts latent subgoals are off (the section is inherited from HBC's config)
    "iris": {"algo.latent_subgoal.enabled": (False,), "algo.latent_subgoal.prior_correction.*": (_ANY,)},
}
# HBC/IRIS: robomimic rewrites the actor's goal modalities from the planner's subgoal keys at construction
ACTOR_GOAL = "observation.actor.modalities.goal."
PLANNER_SUBGOAL = {"hbc": "observation.planner.modalities.subgoal.",
                   "iris": "observation.value_planner.planner.modalities.subgoal."}

# modmimic keys robomimic has no setting for, with the value at which modmimic behaves as robomimic (_ANY: any)
MODMIMIC_ONLY = {
    "recipe_name": _ANY, "preset": _ANY, "device": _ANY, "resume": _ANY, "resume_dir": _ANY,
    "experiment.rollout.at_end": False,
    "train.hdf5_memmap_dir": None, "train.compile": False, "train.compile_backend": _ANY, "train.cuda_graphs": False,
    "train.fused_optimizer": False, "train.amp": None, "train.store_on_device": _ANY, "train.stop_after_epoch": None,
    "train.idle_steps.drop": False, "train.idle_steps.*": _ANY,
    "*.share_net_from": {}, "*.backbone_kwargs.use_group_norm": False,
    "algo.adv.filter_type": "exp",
}
MODMIMIC_ONLY_BY_ALGO = {  # diffusion_policy: modmimic's transformer denoiser and temporal ensembling
    "diffusion_policy": {"algo.transformer.*": _ANY, "algo.temporal_ensemble": False, "algo.ensemble_k": _ANY,
                         "*.backbone_kwargs.use_group_norm": True},  # robomimic swaps BatchNorm for GroupNorm
}
# optimizer settings robomimic reads with .get(): written only where its config classes have them
OPTIMIZER_KEYS = {"*optim_params.*.optimizer_type": "adam"}
OPTIMIZER_ALGOS = ("bc", "diffusion_policy")


def _match(key: str, table: dict):
    """The value(s) of the first pattern of ``table`` matching ``key``, or None."""
    for pattern, value in table.items():
        if key == pattern or fnmatch.fnmatchcase(key, pattern):
            return (value,)
    return None


def leaves(node, prefix: str = ""):
    """``(dotted key, value)`` of every leaf of a nested dict; an empty dict is a leaf (``{}``)."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            if not isinstance(k, str) or not k or "." in k:
                raise ConfigError(f"robomimic config key {prefix}{k!r} is not a plain name")
            yield from leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


@functools.lru_cache(maxsize=None)
def _defaults(recipe: str) -> dict:
    from modmimic.config import default_config, to_plain

    return to_plain(default_config(recipe))


def recipe_defaults(recipe: str) -> dict:
    """The composed default config of ``recipe`` as a plain dict (composed once per process)."""
    return copy.deepcopy(_defaults(recipe))


# --- reading -----------------------------------------------------------------------------------------------------

def load(path: str) -> dict:
    """A robomimic JSON config file as a dict (a stored file: regular file, bounded size and nesting)."""
    from modmimic.stored import loads_json, read_text

    data = loads_json(read_text(path, "robomimic config"), path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a robomimic config is a JSON object, got {type(data).__name__}")
    return data


def _check_safe(data: dict, source: str) -> None:
    from modmimic.trust import NAME_KEYS

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in NAME_KEYS:
                    raise ConfigError(f"{source}: key {where}{k} names code; a robomimic config holds settings only")
                walk(v, f"{where}{k}.")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where[:-1]}[{i}].")
        elif isinstance(node, str) and "${" in node:
            raise ConfigError(f"{source}: {where[:-1]} holds an interpolation ({node!r}); a robomimic config holds "
                              "plain values")
        elif isinstance(node, float) and not math.isfinite(node):
            raise ConfigError(f"{source}: {where[:-1]} is {node}, not a finite number")

    walk(data, "")


def recipe_of(data: dict, source: str = "config") -> str:
    """The recipe a robomimic config trains: its ``algo_name``'s flag function applied to the base recipe's
    ``algo`` section with the JSON's ``algo`` laid over (as :func:`modmimic.algo.algo_factory` chooses)."""
    from omegaconf import OmegaConf

    from modmimic.algo import REGISTERED_ALGO_FACTORY_FUNCS
    from modmimic.config import list_recipes

    name = data.get("algo_name")
    if not isinstance(name, str) or name not in REGISTERED_ALGO_FACTORY_FUNCS or name not in list_recipes():
        known = [n for n in REGISTERED_ALGO_FACTORY_FUNCS if n in list_recipes()]
        raise ConfigError(f"{source}: unknown algo_name {name!r}{closest(str(name), known)}; modmimic trains "
                          f"{', '.join(known)}")
    algo = data.get("algo", {})
    if not isinstance(algo, dict):
        raise ConfigError(f"{source}: algo must be a JSON object, got {type(algo).__name__}")
    base = recipe_defaults(name)["algo"]
    merged = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(algo))
    try:
        return REGISTERED_ALGO_FACTORY_FUNCS[name](merged)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except (AttributeError, KeyError, TypeError) as e:
        raise ConfigError(f"{source}: the algo section does not choose a {name} variant ({e})") from None


def hydra_value(v, key: str = "") -> str:
    """``v`` written in hydra's override grammar (strings quoted, so ``'true'`` stays a string)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        # hydra's quoted strings: backslashes are literal except before a quote or the closing quote
        return "'" + re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, v).replace("'", "\\'") + "'"
    if isinstance(v, list):
        return "[" + ",".join(hydra_value(x, key) for x in v) + "]"
    if isinstance(v, dict):
        for k in v:
            if not isinstance(k, str) or not _DICT_KEY.fullmatch(k):
                raise ConfigError(f"robomimic config key {key}: dict key {k!r} is not a plain name (letters, digits "
                                  "and _ / - + . @)")
        return "{" + ",".join(f"{k}:{hydra_value(x, key)}" for k, x in v.items()) + "}"
    raise ConfigError(f"robomimic config key {key}: unsupported value {v!r}")


def to_overrides(data: dict, source: str = "config", skip=()) -> tuple[str, list[str]]:
    """``(recipe, hydra overrides)`` equivalent to robomimic config ``data``. ``skip``: keys the command line sets
    (left out here). A key modmimic cannot honour is a :class:`ConfigError` naming it."""
    from modmimic.config import OPEN_DICTS

    _check_safe(data, source)
    data, language = language_keys(data)
    unknown = [k for k in data if k not in (*SECTIONS, "algo_name")]
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key {unknown[0]!r}; a robomimic config has algo_name and the "
                          f"sections {', '.join(SECTIONS)}")
    for s in SECTIONS:
        if s in data and not isinstance(data[s], dict):
            raise ConfigError(f"{source}: {s} must be a JSON object, got {type(data[s]).__name__}")
    recipe = recipe_of(data, source)
    ref = dict(leaves(recipe_defaults(recipe)))
    prefixes = {k.rsplit(".", i)[0] for k in ref for i in range(k.count(".") + 1)}
    by_algo = ROBOMIMIC_ONLY_BY_ALGO.get(data["algo_name"], {})
    given = dict(leaves({s: data[s] for s in SECTIONS if s in data}))
    subgoal = PLANNER_SUBGOAL.get(data["algo_name"])
    out, opened = [], set()
    for key, value in given.items():
        if key in skip or any(key.startswith(s + ".") for s in skip):
            continue
        accepted = _match(key, ROBOMIMIC_ONLY) or _match(key, by_algo)
        if accepted is not None and key not in ref:
            if _ANY in accepted[0] or value in accepted[0]:
                continue
            raise ConfigError(f"{source}: {key}={value!r} cannot be honoured: modmimic has no such setting (it "
                              f"behaves as {key}={accepted[0][0]!r})")
        if subgoal and key.startswith(ACTOR_GOAL):
            planner = given.get(subgoal + key[len(ACTOR_GOAL):], ref.get(subgoal + key[len(ACTOR_GOAL):]))
            if value in ([], planner):
                continue  # robomimic overwrites it with the planner's subgoal keys; so does the recipe
            raise ConfigError(f"{source}: {key}={value!r}: the actor's goal is the planner's subgoal "
                              f"({subgoal}{key[len(ACTOR_GOAL):]}={planner!r}); robomimic rewrites it too")
        if value == {} and key in prefixes:
            continue  # empty kwargs: the class defaults, which modmimic's config holds
        open_dict = next((d for d in OPEN_DICTS if key.startswith(d + ".")), None)
        if open_dict is not None:  # user data (action keys such as "action/eef_pos"): merged in as one dict
            if open_dict not in opened and open_dict not in skip:
                opened.add(open_dict)
                section, _, rest = open_dict.partition(".")
                out.append(f"++{open_dict}={hydra_value(data[section][rest], open_dict)}")
            continue
        if key not in ref:
            if key in prefixes:  # a section replaced by a plain value
                raise ConfigError(f"{source}: {key} is a section in modmimic's {recipe} config, got {value!r}")
            raise ConfigError(f"{source}: robomimic config key {key!r} cannot be honoured: modmimic's {recipe} "
                              f"config has no such setting{closest(key, list(ref))}")
        out.append(f"{key}={hydra_value(value, key)}")
    return recipe, out + [o for o in language if o.split("=", 1)[0] not in skip]


LANG_EMB = "lang_emb"  # robomimic v0.5's observation key of the instruction's CLIP embedding (lang_utils.py)


def language_keys(data: dict) -> tuple[dict, list]:
    """robomimic's language conditioning in modmimic's terms: ``lang_emb`` listed as an observation key becomes
    ``task.conditioning=language`` (low_dim: the embedding as an extra input, ``task.fuse=concat``; a visual
    modality: ``task.fuse=film``) and is taken out of the key lists. The text encoder's local directory is still
    needed (``task.text_encoder.kwargs.path``): modmimic downloads nothing."""
    mods = ((data.get("observation") or {}).get("modalities") or {}).get("obs") or {}
    found = [m for m, keys in mods.items() if isinstance(keys, list) and LANG_EMB in keys]
    if not found:
        return data, []
    import copy

    data = copy.deepcopy(data)
    for m in found:
        data["observation"]["modalities"]["obs"][m] = [k for k in mods[m] if k != LANG_EMB]
    return data, ["task.conditioning=language", f"task.fuse={'concat' if found == ['low_dim'] else 'film'}"]


def expand_args(args: list[str]) -> list[str]:
    """Command-line arguments with ``config=<file.json>`` replaced by ``recipe=<recipe>`` and the JSON's overrides
    (placed first, so the command line's own overrides win; the keys it sets are left out of the JSON's)."""
    given = [a for a in args if a.startswith("config=")]
    if not given:
        return args
    if len(given) > 1:
        raise ConfigError("config= is given more than once; name one robomimic JSON config")
    if any(a.startswith("recipe=") for a in args):
        raise ConfigError("config= and recipe= both choose the recipe: drop recipe= (the JSON's algo_name and algo "
                          "flags choose it)")
    path = given[0].split("=", 1)[1]
    if path.startswith(("'", '"')) and path.endswith(path[0]) and len(path) > 1:
        path = path[1:-1]
    rest = [a for a in args if not a.startswith("config=")]
    skip = {a.split("=", 1)[0].lstrip("+~") for a in rest if "=" in a and not a.startswith("-")}
    if "dataset" in skip:  # dataset=<path> is train.data
        skip.add("train.data")
    recipe, overrides = to_overrides(load(path), path, skip)
    return [f"recipe={recipe}", *overrides, *rest]


def compose_json(path: str, overrides=()):
    """The validated modmimic config of robomimic JSON config ``path`` plus hydra ``overrides``."""
    from modmimic.config import compose

    args = expand_args([f"config={path}", *overrides])
    return compose(args[0].split("=", 1)[1], args[1:])


# --- writing -----------------------------------------------------------------------------------------------------

def _set(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[last] = value


def _same(a, b) -> bool:
    return b is _ANY or a == b


def to_robomimic(cfg) -> tuple[dict, dict]:
    """``(robomimic config dict, {key: value left out})`` of a composed modmimic config: its robomimic sections in
    robomimic's layout. modmimic's own keys are left out; those not at the value at which modmimic behaves as
    robomimic are returned, for the caller to report."""
    from omegaconf import OmegaConf

    from modmimic.config import to_plain

    plain = to_plain(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))
    algo_name = plain["algo_name"]
    out, left_out = {"algo_name": algo_name}, {}
    hierarchical = algo_name in PLANNER_SUBGOAL
    for key, value in leaves({s: plain[s] for s in SECTIONS if s in plain}):
        neutral = _match(key, MODMIMIC_ONLY_BY_ALGO.get(algo_name, {})) or _match(key, MODMIMIC_ONLY)
        if neutral is None and algo_name not in OPTIMIZER_ALGOS and not key.startswith("algo.actor."):
            neutral = _match(key, OPTIMIZER_KEYS)
        if neutral is None and hierarchical:
            if key.startswith(("observation.modalities.", "observation.encoder.")):
                neutral = (_ANY,)  # robomimic's HBC/IRIS have per-component observation sections only
            elif key.startswith(("algo.actor.gaussian.", "algo.actor.gmm.", "algo.actor.vae.")):
                neutral = (False,) if key.endswith(".enabled") else (_ANY,)  # robomimic deletes these sections
            elif key.startswith(ACTOR_GOAL):
                value = []  # robomimic fills it from the planner's subgoal keys at construction
        if neutral is not None:
            if not _same(value, neutral[0]):
                left_out[key] = value
            continue
        _set(out, key, value)
    return out, left_out
