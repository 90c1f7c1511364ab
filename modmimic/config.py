"""Configuration: the base config (``modmimic/conf/base.yaml``) plus a recipe (``recipes/<name>.yaml``, read by
:mod:`modmimic.recipefiles`), composed once with hydra, robomimic's variant flags resolved, validated. The tree mirrors robomimic's sections (``experiment``, ``train``, ``algo``, ``observation``); a recipe adds
its structure (``batch``, ``nets``, ``targets``, ``prepare``, ``losses``, ``updates``, ``act``).

Composed configs are in OmegaConf struct mode: reading or setting a key that does not exist raises, which catches
typos the way robomimic's key-locked configs do.
"""
from __future__ import annotations

import math
import os

from omegaconf import DictConfig, ListConfig, OmegaConf

from modmimic.errors import ConfigError, closest  # noqa: F401  (re-exported: modmimic.config.ConfigError)
from modmimic.variants import REGISTERED_ALGO_FACTORY_FUNCS
from modmimic.recipefiles import (  # noqa: F401  (re-exported: modmimic.config.find_recipe, ...)
    STRUCTURE_SECTIONS, DATA_REQUIREMENTS, recipes_dir, base_config_path, RECIPE_PATH_ENV, _FILES,
    recipe_dirs, is_recipe_path, find_recipe, list_recipes, recipe_description, check_recipe_name,
    DEFAULT_PRESET, presets_dir, list_presets, check_preset_name, load_preset, preset_description,
    recipe_lineage, preset_family, preset_values, STRUCTURE_ENTRIES, _builder, _merge_recipe,
    optim_defaults, _with_optim_defaults, COMPONENT_KEYS, _ROOTED, reroot, _follow_parent,
    recipe_node, expand_components, _leaf_paths, reference_config, valid_keys)

def recipe_key(recipe: str) -> str:
    """The name under which ``recipe`` (a name or a path) is registered in hydra's ConfigStore (group ``recipe``)."""
    register_configs()
    if not is_recipe_path(recipe):
        key = str(recipe)
    else:
        import hashlib

        path = find_recipe(recipe)
        key = f"file_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        _FILES[key] = path
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="recipe", name=key, node=recipe_node(key), package="_global_")
    register_presets(key)
    return key


_REGISTERED = False


def register_configs() -> None:
    """Register the base config (``modmimic_base``) in hydra's ConfigStore; recipes are registered (group
    ``recipe``, package ``_global_``, their parents merged in, see :func:`recipe_node`) as they are used, by
    :func:`recipe_key`."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    base = OmegaConf.load(base_config_path())
    base_with_defaults = OmegaConf.merge({"defaults": base_defaults()}, base)
    cs.store(name="modmimic_base", node=base_with_defaults)
    _REGISTERED = True
    recipe_key("bc")


def base_defaults() -> list:
    """The base config's hydra defaults list: a recipe, then a preset over it (``preset=<name>`` picks
    ``preset_values/<name>_<recipe>``, registered by :func:`register_presets`), then the command line's overrides."""
    return ["_self_", {"recipe": "bc"}, {"preset": DEFAULT_PRESET}, {"preset_values": "${preset}_${recipe}"}]


def register_presets(key: str) -> None:
    """Every preset in the ConfigStore, and its values for recipe ``key`` (group ``preset_values``)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for p in list_presets():
        cs.store(group="preset", name=p, node={"preset": p}, package="_global_")
        cs.store(group="preset_values", name=f"{p}_{key}", node=preset_values(p, key), package="_global_")


def compose(recipe: str = "bc", overrides=()) -> DictConfig:
    """Base config + ``recipe`` + hydra-syntax ``overrides`` (``["train.batch_size=16", ...]``), validated."""
    from hydra import compose as hydra_compose, initialize
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    key = recipe_key(recipe)
    overrides = list(overrides)
    check_override_keys(key, overrides)
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize(version_base="1.3", config_path=None):
            cfg = hydra_compose("modmimic_base", overrides=[f"recipe={key}", *overrides])
    except ConfigCompositionException as e:
        raise ConfigError(str(e.__cause__ or e)) from None
    finally:
        if GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()
    cfg = finalize(cfg)
    if overrides:
        check_types(cfg, reference_config(key))
    return resolve_variants(cfg)






# --- robomimic's variant flags, resolved once -------------------------------------------------------------------
#
# robomimic picks an algorithm's variant from flags (``recipe=bc algo.rnn.enabled=true`` trains BC-RNN; an HBC whose
# ``algo.planner.vae.enabled=false`` plans with GL). compose() resolves them into the tree it returns: the variant's
# structure (nets, losses, updates, act, ...) with the config's values, for the recipe and for each component of a
# hierarchical recipe. The built algorithm, config.yaml and checkpoints then carry the final structure, and nothing
# reads a recipe file after composition.


def variant_structure(cfg: DictConfig, recipe: str) -> DictConfig:
    """``cfg``'s values (experiment, train, algo, observation, ...) with ``recipe``'s structure sections."""
    base = OmegaConf.merge(OmegaConf.load(base_config_path()), recipe_node(recipe))
    values = OmegaConf.to_container(cfg, resolve=False)
    for s in STRUCTURE_SECTIONS + ("recipe_name",):
        values.pop(s, None)
    out = OmegaConf.merge(base, values)
    validate(out)
    OmegaConf.set_struct(out, True)
    return out


def with_recipe_structure(cfg: DictConfig, recipe: str) -> DictConfig:
    """``cfg``'s values with ``recipe``'s structure (see :func:`variant_structure`)."""
    return variant_structure(cfg, recipe)


def resolve_variants(cfg: DictConfig) -> DictConfig:
    """``cfg`` with robomimic's flags applied (see above): the recipe's variant (shipped recipes only: a user's own
    recipe keeps its structure), then each component's."""
    flags = REGISTERED_ALGO_FACTORY_FUNCS.get(str(cfg.algo_name))
    if flags is not None:
        recipe = flags(cfg.algo)
        if recipe != cfg.recipe_name and (recipes_dir() / f"{cfg.recipe_name}.yaml").is_file():
            cfg = variant_structure(cfg, recipe)
    if cfg.get("components"):
        cfg = resolve_component_variants(cfg)
    return cfg


def _own_component_structure(cfg: DictConfig, name: str) -> dict:
    """The structure a hierarchical recipe file sets on component ``name`` besides naming its sub-recipe: what the
    component keeps when its flags select another variant of the sub-recipe."""
    try:
        spec = (OmegaConf.load(find_recipe(str(cfg.recipe_name))).get("components") or {}).get(name) or {}
    except ConfigError:
        return {}
    return {k: OmegaConf.to_container(v, resolve=False) if isinstance(v, (DictConfig, ListConfig)) else v
            for k, v in spec.items() if k in STRUCTURE_SECTIONS}


def resolve_component_variants(cfg: DictConfig) -> DictConfig:
    """``cfg`` (hierarchical) with each component's structure replaced by the variant its own flags pick."""
    changed = {}
    for name, spec in cfg.components.items():
        if spec is None:
            continue
        sub = component_config(cfg, name)
        flags = REGISTERED_ALGO_FACTORY_FUNCS.get(str(sub.algo_name))
        recipe = flags(sub.algo) if flags is not None else sub.recipe_name
        if recipe == sub.recipe_name:
            continue
        node = OmegaConf.to_container(recipe_node(recipe), resolve=False)
        graft = {k: OmegaConf.to_container(spec, resolve=False)[k] for k in COMPONENT_KEYS if k in spec}
        graft["recipe"] = recipe
        for s in STRUCTURE_SECTIONS:
            if s in node:
                graft[s] = reroot(node[s], name)
        changed[name] = (OmegaConf.merge(graft, _own_component_structure(cfg, name)), reroot(node.get("algo") or {}, name))
    if not changed:
        return cfg
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    for name, (comp, algo) in changed.items():
        out.components[name] = comp
        out.algo[name] = OmegaConf.merge(algo, out.algo[name])
    validate(out)
    OmegaConf.set_struct(out, True)
    return out


def default_config(recipe: str) -> DictConfig:
    return compose(recipe, [])


def finalize(cfg: DictConfig) -> DictConfig:
    """Drop hydra's bookkeeping, check types and consistency, and lock keys (struct mode)."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    cfg.pop("defaults", None)
    validate(cfg)
    OmegaConf.set_struct(cfg, True)
    return cfg


def config_factory(algo_name: str, dic: dict | None = None) -> DictConfig:
    """robomimic's ``config_factory``: the defaults of a recipe (an algo name such as ``"bc"`` is its base recipe),
    or, given ``dic`` (e.g. a checkpoint's config), that config validated."""
    if dic is not None:
        cfg = OmegaConf.create(dict(dic))
        validate(cfg)
        OmegaConf.set_struct(cfg, True)
        return cfg
    return default_config(algo_name)


# --- validation ----------------------------------------------------------------------------------------------



def check_override_keys(recipe: str, overrides) -> None:
    """Unknown keys in ``key=value`` overrides are errors that name the closest valid key (``+key=`` adds)."""
    added = [o.split("=", 1)[0].lstrip("+").strip() for o in overrides if "=" in o and o.startswith("+")]
    overrides = [o for o in overrides if "=" in o and not o.startswith(("+", "~", "hydra."))]
    added = [k for k in added if k.split(".", 1)[0] in FIXED_SECTIONS]
    if not overrides and not added:
        return
    ref = reference_config(recipe)
    valid = [p for p, _ in _leaf_paths(ref)]
    prefixes = {p.rsplit(".", i)[0] for p in valid for i in range(p.count(".") + 1)}
    for key in added:  # +key adds a key: only inside the open dicts of the fixed sections
        parents = [key.rsplit(".", i)[0] for i in range(1, key.count(".") + 1)]
        if key in prefixes or any(p in OPEN_DICTS or p.endswith("_kwargs") or _is_empty_dict(ref, p)
                                  for p in parents):
            continue
        raise ConfigError(f"unknown config key {key!r}{closest(key, valid)}: +key adds a key only inside the open "
                          f"dicts ({', '.join(OPEN_DICTS)} and the *_kwargs dicts, checked by what they build); the sections "
                          f"{', '.join(FIXED_SECTIONS)} have fixed keys")
    for o in overrides:
        key, value = (x.strip() for x in o.split("=", 1))
        if key.startswith("components.") and key.endswith(".recipe") and key in prefixes:
            fixed = OmegaConf.select(ref, key)
            if value not in list_recipes():
                raise ConfigError(f"{key}: unknown recipe {value!r}{closest(value, list_recipes())}; available "
                                  f"recipes: {', '.join(list_recipes())}")
            if value != str(fixed):
                name = key[len("components."):-len(".recipe")].replace(".components.", ".")
                raise ConfigError(
                    f"{key}={value}: a component's sub-recipe is part of recipe {recipe!r} ({fixed}); choose its "
                    f"variant with its robomimic flags under algo.{name} (e.g. algo.planner.vae.enabled=false for a "
                    "GL planner, algo.actor.gmm.enabled=true for a BC-RNN-GMM actor), or write a recipe that "
                    "references another sub-recipe")
            continue
        if key == "preset":
            check_preset_name(value)
            continue
        if key in ("recipe", "dataset") or key in prefixes:
            continue
        raise ConfigError(f"unknown config key {key!r}{closest(key, valid)}")


FIXED_SECTIONS = ("experiment", "train", "algo", "observation", "task")  # robomimic's sections: their keys are fixed
# user data: any key may be added
OPEN_DICTS = ("train.action_config", "experiment.env_meta_update_dict", "task.text_encoder.kwargs")


def _is_empty_dict(ref: DictConfig, key: str) -> bool:
    node = OmegaConf.select(ref, key, default=None)
    return isinstance(node, DictConfig) and len(node) == 0


def _flatten(d, prefix=""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flatten(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], d


def _type_ok(ref, v) -> bool:
    if v is None or ref is None:
        return True
    if isinstance(ref, bool):
        return isinstance(v, bool)
    if isinstance(ref, float):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(ref, int):
        return isinstance(v, int) and not isinstance(v, bool)
    if isinstance(ref, (str, list)):
        return isinstance(v, type(ref))
    return True


def check_types(cfg: DictConfig, reference: DictConfig) -> None:
    """Every leaf of ``cfg`` must have the type of the same leaf in ``reference`` (an int may stand for a float;
    ``null`` is allowed anywhere and a ``null`` default accepts any type)."""
    ref = dict(_flatten(OmegaConf.to_container(reference, resolve=True)))
    for path, v in _flatten(OmegaConf.to_container(cfg, resolve=True)):
        if path in ref and not _type_ok(ref[path], v):
            raise ConfigError(f"config key {path!r} must be {type(ref[path]).__name__}, got {v!r}")


def check_run_name(name) -> None:
    """``experiment.name`` names one folder under ``train.output_dir``: no path separators, not ``.``/``..``, not
    absolute, not empty, so a run never writes outside ``train.output_dir``."""
    text = "" if name is None else str(name)
    seps = [s for s in (os.sep, os.altsep, "/") if s]
    if not text.strip() or text in (".", "..") or any(s in text for s in seps) or "\0" in text \
            or os.path.isabs(text):
        raise ConfigError(f"experiment.name must be a plain folder name (runs go to <train.output_dir>/"
                          f"<experiment.name>/<timestamp>), got {name!r}: no path separators, '.', '..' or absolute "
                          "paths; choose the parent folder with train.output_dir")


TASK_CONDITIONING = (None, "onehot", "language")


def check_task_section(cfg: DictConfig) -> None:
    """``task.conditioning`` is null, onehot or language; ``task.fuse`` film or concat; language needs a text
    encoder ``fn``."""
    t = cfg.get("task")
    if t is None:
        return
    cond = t.get("conditioning")
    if cond not in TASK_CONDITIONING:
        raise ConfigError(f"task.conditioning must be null, onehot or language, got {cond!r}")
    if t.get("fuse") not in ("film", "concat"):
        raise ConfigError(f"task.fuse must be film or concat, got {t.get('fuse')!r}")
    if cond == "language" and not (t.get("text_encoder") or {}).get("fn"):
        raise ConfigError("task.conditioning=language needs task.text_encoder.fn (e.g. "
                          "modmimic.text.clip_text_embeddings with task.text_encoder.kwargs.path=<local dir>)")


def validate(cfg: DictConfig, where: str = "") -> None:
    """Consistency checks that do not need data (those that do live in the Algo builder). ``where``: the
    component path (``"planner."``) of a sub-config, for messages that name the full key."""
    if not where and cfg.get("experiment") is not None and "name" in cfg.experiment:
        check_run_name(cfg.experiment.name)
    composite = bool(cfg.get("components"))
    for section in ("algo_name", "recipe_name", "train", "algo", "observation", "updates", "act") + \
            (() if composite else ("nets",)):
        if section not in cfg:
            raise ConfigError(f"config has no {section!r} section: not a modmimic config")
    t = cfg.train
    for k in ("seq_length", "frame_stack", "batch_size", "num_epochs"):
        if not isinstance(t[k], int) or isinstance(t[k], bool) or t[k] < 1:
            raise ConfigError(f"train.{k} must be a positive int, got {t[k]!r}")
    check_values(cfg, where)
    check_task_section(cfg)
    a = cfg.algo
    if a.get("rnn") is not None and a.rnn.get("enabled") and a.rnn.horizon > t.seq_length:
        raise ConfigError(f"algo.{where}rnn.horizon ({a.rnn.horizon}) is longer than train.seq_length "
                          f"({t.seq_length}): the RNN would act on longer sequences than it was trained on")
    tr = a.get("transformer")
    if tr is not None and tr.get("enabled") and "context_length" in tr and tr.context_length != t.frame_stack:
        raise ConfigError(f"algo.{where}transformer.context_length ({tr.context_length}) must equal "
                          f"train.frame_stack ({t.frame_stack})")
    ch = a.get("act")
    if isinstance(ch, DictConfig) and "chunk_size" in ch:  # action chunking (ACT): windows hold the whole chunk
        if not isinstance(ch.chunk_size, int) or not 1 <= ch.chunk_size <= t.seq_length:
            raise ConfigError(f"algo.{where}act.chunk_size ({ch.chunk_size!r}) must be an int in [1, "
                              f"train.seq_length] (train.seq_length={t.seq_length}): set train.seq_length = "
                              "algo.act.chunk_size")
        if t.frame_stack != 1:
            raise ConfigError(f"algo.{where}act: action chunks start at the current observation; train.frame_stack "
                              f"must be 1, got {t.frame_stack}")
    sh = a.get("subgoal_horizon")
    if sh is not None and (not isinstance(sh, int) or isinstance(sh, bool) or not 1 <= sh <= t.seq_length):
        raise ConfigError(f"algo.{where}subgoal_horizon ({sh!r}) must be an int in [1, train.seq_length] "
                          f"(train.seq_length={t.seq_length}): the subgoal is the observation subgoal_horizon steps "
                          "ahead, taken from the sampled window; raise train.seq_length or lower the horizon")
    if t.goal_mode not in (None, "last"):
        raise ConfigError(f"train.goal_mode must be null or 'last', got {t.goal_mode!r}")
    if t.goal_mode == "last" and not t.hdf5_load_next_obs:
        raise ConfigError("train.goal_mode='last' needs train.hdf5_load_next_obs=true")
    requires = list(cfg.get("requires") or [])
    for r in requires:
        if r not in DATA_REQUIREMENTS:
            raise ConfigError(f"requires: unknown data requirement {r!r}; expected some of {list(DATA_REQUIREMENTS)}")
    if "next_obs" in requires and not t.hdf5_load_next_obs:
        raise ConfigError(f"recipe {cfg.recipe_name!r} needs next observations: set train.hdf5_load_next_obs=true")
    if composite:
        names = [n for n, spec in cfg.components.items() if spec is not None]
        for u in cfg.updates:
            if u.get("component") not in names:
                raise ConfigError(f"updates: {OmegaConf.to_container(u)} must name a component to train "
                                  f"(component: <one of {names}>)")
        for n in names:
            comp = cfg.components[n]
            unknown = [k for k in comp.keys() if k not in COMPONENT_KEYS + STRUCTURE_SECTIONS]
            if unknown:
                raise ConfigError(f"components.{n}: unknown keys {unknown}"
                                  f"{closest(unknown[0], COMPONENT_KEYS + STRUCTURE_SECTIONS)}; a component has "
                                  f"{', '.join(COMPONENT_KEYS)} and the structure sections of its sub-recipe")
            if comp.get("recipe") is None:
                raise ConfigError(f"components.{n}.recipe: a component names its sub-recipe")
            component_config(cfg, n, where)  # (its recipe file was read when the config was composed)
        return
    check_windows(cfg, where)
    names = [n for n, spec in cfg.losses.items() if spec is not None]
    for u in cfg.updates:
        for lname in u.losses:
            if lname not in names:
                raise ConfigError(f"update {u.get('name')!r} uses loss {lname!r}, which the recipe does not define "
                                  f"(losses: {names})")
        opts = u.get("optimizer")
        for opt in ([] if opts is None else [opts] if isinstance(opts, str) else opts):
            if opt not in cfg.nets:
                raise ConfigError(f"update {u.get('name')!r} steps optimizer {opt!r}, but there is no network of "
                                  f"that name (nets: {list(cfg.nets)})")


def check_windows(cfg: DictConfig, where: str = "") -> None:
    """The windows the recipe's batch function cuts fit ``train.seq_length`` / ``train.frame_stack`` (Diffusion
    Policy's horizon windows; ACT's chunk is checked with its settings), before any data is read: robomimic's own
    Diffusion Policy template has seq_length 1."""
    b, t = cfg.get("batch") or {}, cfg.train
    fn = str(b.get("fn") or "")
    if fn.endswith("batching.horizon_window"):
        to, tp = b.obs_horizon, b.prediction_horizon
        if t.frame_stack != to or t.seq_length < tp:
            raise ConfigError(f"train.frame_stack={t.frame_stack} and train.seq_length={t.seq_length} do not hold "
                              f"the {to} observations and {tp}-step action chunk of algo.{where}horizon: set "
                              f"train.frame_stack={to} (observation_horizon) and train.seq_length={tp} "
                              "(prediction_horizon)")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _need(ok: bool, key: str, v, what: str, why: str = "") -> None:
    if not ok:
        raise ConfigError(f"{key} must be {what}, got {v!r}" + (f": {why}" if why else ""))


def check_values(cfg: DictConfig, where: str = "") -> None:
    """Counts, rates and schedules that would make a run train nothing, never stop, or step the wrong way: step
    counts and epoch periods are positive ints (or null where robomimic allows it), rollout settings positive,
    learning rates not negative, LR schedules increasing epochs with a usable decay factor, gradient clipping positive,
    ``train.stop_after_epoch`` within ``train.num_epochs``."""
    t, ex = cfg.train, cfg.get("experiment")
    if ex is not None:
        for k in ("epoch_every_n_steps", "validation_epoch_every_n_steps"):
            v = ex.get(k)
            _need(v is None or (_is_int(v) and v >= 1), f"experiment.{k}", v,
                  "a positive int (or null: one pass over the split)", "an epoch of no steps trains nothing")
        save = ex.get("save") or {}
        v = save.get("every_n_epochs")
        _need(v is None or (_is_int(v) and v >= 1), "experiment.save.every_n_epochs", v,
              "a positive int or null (null: no periodic checkpoints)")
        v = save.get("every_n_seconds")
        _need(v is None or (_is_num(v) and v > 0), "experiment.save.every_n_seconds", v, "a positive number or null")
        for e in list(save.get("epochs") or []):
            _need(_is_int(e) and e >= 1, "experiment.save.epochs", list(save.epochs), "a list of positive ints")
        r = ex.get("rollout") or {}
        for k, lo in (("n", 1), ("horizon", 1), ("rate", 1), ("warmstart", 0)):
            if k in r:
                _need(_is_int(r[k]) and r[k] >= lo, f"experiment.rollout.{k}", r[k],
                      "a positive int" if lo else "an int >= 0",
                      "to run no rollouts set experiment.rollout.enabled=false")
        if "video_skip" in ex:
            _need(_is_int(ex.video_skip) and ex.video_skip >= 1, "experiment.video_skip", ex.video_skip,
                  "a positive int")
    v = t.get("max_grad_norm")
    _need(v is None or (_is_num(v) and v > 0), "train.max_grad_norm", v, "a positive number or null (no clipping)")
    v = t.get("stop_after_epoch")
    _need(v is None or (_is_int(v) and 1 <= v <= t.num_epochs), "train.stop_after_epoch", v,
          f"null or an int in [1, train.num_epochs={t.num_epochs}]",
          "a later epoch would never be reached (raise train.num_epochs to train longer)")
    idle = t.get("idle_steps") or {}
    if "tolerance" in idle:
        _need(_is_num(idle.tolerance) and idle.tolerance > 0, "train.idle_steps.tolerance", idle.tolerance,
              "a positive number", "a step is still when every observation dimension moves less than it x its std")
    if "keep" in idle:
        _need(_is_int(idle.keep) and idle.keep >= 0, "train.idle_steps.keep", idle.keep, "an int >= 0")
    if idle.get("drop", False) and "rewards" in list(cfg.get("requires") or []):
        raise ConfigError(f"train.idle_steps.drop=true with recipe {cfg.get('recipe_name')!r}: dropping steps breaks "
                          "the n-step targets and returns of a recipe that learns from rewards; it is for behaviour "
                          "cloning recipes")
    v = t.get("num_data_workers")
    _need(v is None or (_is_int(v) and v >= 0), "train.num_data_workers", v, "an int >= 0")
    b = cfg.get("batch") or {}
    if b.get("mc_return_key") and (b.get("reward_scale", 1.0) != 1.0 or b.get("reward_shift", 0.0) != 0.0):
        raise ConfigError(f"batch.reward_scale / batch.reward_shift with recipe {cfg.get('recipe_name')!r}: its "
                          "Monte-Carlo returns-to-go are computed from the untransformed rewards")
    _check_optim_params(cfg.algo, f"algo.{where}")


def _check_optim_params(node, prefix: str) -> None:
    """Every ``optim_params.<net>`` under ``node`` (recipes nest them per network group)."""
    if not isinstance(node, DictConfig):
        return
    for k in node.keys():
        child = node._get_node(k)
        if k == "optim_params" and isinstance(child, DictConfig):
            for net in child.keys():
                p = child.get(net)
                if isinstance(p, DictConfig) and isinstance(p.get("learning_rate"), DictConfig):
                    _check_one_optimizer(p, f"{prefix}optim_params.{net}")
        elif isinstance(child, DictConfig):
            _check_optim_params(child, f"{prefix}{k}.")


def _check_one_optimizer(p: DictConfig, key: str) -> None:
    lr = p.learning_rate
    _need(_is_num(lr.get("initial")) and lr.initial >= 0, f"{key}.learning_rate.initial", lr.get("initial"),
          "a number >= 0 (0 freezes the network)")
    schedule = lr.get("epoch_schedule")
    schedule = [] if schedule is None else list(schedule)
    kind = lr.get("scheduler_type", "multistep")
    if schedule and kind in ("multistep", "linear"):
        ok = all(_is_int(e) and e >= 1 for e in schedule) and all(a < b for a, b in zip(schedule, schedule[1:]))
        _need(ok, f"{key}.learning_rate.epoch_schedule", schedule, "strictly increasing epochs >= 1")
        f = lr.get("decay_factor")
        if kind == "multistep":
            _need(_is_num(f) and f > 0, f"{key}.learning_rate.decay_factor", f,
                  "a positive number (the LR is multiplied by it at each epoch of the schedule)")
        else:
            _need(_is_num(f) and 0 <= f <= 1, f"{key}.learning_rate.decay_factor", f,
                  "a number in [0, 1] (the final fraction of the LR of a linear schedule)")
    if kind == "cosine" and lr.get("warmup_steps") is not None:
        _need(_is_int(lr.warmup_steps) and lr.warmup_steps >= 0, f"{key}.learning_rate.warmup_steps",
              lr.warmup_steps, "an int >= 0")
    reg = p.get("regularization")
    if isinstance(reg, DictConfig) and "L2" in reg:
        _need(_is_num(reg.L2) and reg.L2 >= 0, f"{key}.regularization.L2", reg.L2, "a number >= 0")


def component_config(cfg: DictConfig, name: str, where: str = "") -> DictConfig:
    """The stand-alone config of component ``name`` of a hierarchical config (robomimic's sub-algorithm configs):
    ``algo`` = ``algo.<name>``, ``observation`` = ``observation.<name>``, the structure of ``components.<name>``,
    and the shared ``train``/``experiment``; every value resolved in the parent. Validated (keys named in full)."""
    comp = cfg.components[name]

    def plain(node):
        return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node

    if name not in cfg.algo or name not in cfg.observation:
        raise ConfigError(f"component {name!r} has no algo.{where}{name} / observation.{where}{name} section")
    sub = {"algo_name": comp.get("algo_name"), "recipe_name": str(comp.recipe), "device": cfg.get("device", "cpu"),
           "train": plain(cfg.train), "experiment": plain(cfg.experiment),
           "algo": plain(cfg.algo[name]), "observation": plain(cfg.observation[name])}
    for s in STRUCTURE_SECTIONS:
        if comp.get(s) is not None:
            sub[s] = plain(comp[s])
    out = OmegaConf.create(sub)
    validate(out, f"{where}{name}.")
    OmegaConf.set_struct(out, True)
    return out


def all_obs_keys(cfg: DictConfig) -> list[str]:
    """Every observation key a config reads from a dataset: its ``obs``, ``goal`` and ``subgoal`` groups, over
    every component of a hierarchical config."""
    if cfg.get("components"):
        out = []
        for n, spec in cfg.components.items():
            if spec is not None:
                out += [k for k in all_obs_keys(component_config(cfg, n)) if k not in out]
        return out
    out = []
    for g in ("obs", "goal", "subgoal"):
        out += [k for k in obs_keys(cfg, g) if k not in out]
    return out


def obs_keys(cfg: DictConfig, group: str = "obs") -> list[str]:
    """Observation keys of ``observation.modalities.<group>`` over every modality, in config order."""
    mods = cfg.observation.modalities.get(group) or {}
    out = []
    for keys in mods.values():
        out += [k for k in keys if k not in out]
    return out


def to_plain(node):
    """Resolved plain python (dicts/lists) of a config node."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def save_config_yaml(cfg: DictConfig, path: str, sources=()) -> None:
    """``cfg`` resolved, as YAML; ``sources`` (``[{"recipe", "file", "sha256"}]``, see
    :func:`modmimic.checkpointing.recipe_sources`) go first as comments."""
    from modmimic.io import atomic_write_text

    head = "".join(f"# recipe {s['recipe']}: {s['file']} sha256 {s['sha256']}\n" for s in sources)
    atomic_write_text(path, head + OmegaConf.to_yaml(cfg, resolve=True))


def env_flag(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(int(default))) not in ("0", "", "false", "False")


