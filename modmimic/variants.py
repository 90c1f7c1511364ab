"""robomimic's flags choose a recipe variant: one function per robomimic algo name, ``fn(algo_config) -> recipe``
(``bc`` with ``algo.rnn.enabled`` is ``bc_rnn``, ``bcq`` with ``algo.action_sampler.gmm.enabled`` is ``bcq_gmm``).
They also check the settings that decide the variant, once, before anything is built.

:func:`modmimic.config.compose` applies them when it composes a config (the composed tree is the variant's, its
components' included); ``algo_factory`` applies them again only to configs changed after composition (robomimic's
``config_factory`` + flag flips). This module depends on nothing else of modmimic but its errors.
"""
from __future__ import annotations

import math
from collections import OrderedDict

from omegaconf import OmegaConf

from modmimic.errors import ConfigError, closest

REGISTERED_ALGO_FACTORY_FUNCS: "OrderedDict[str, callable]" = OrderedDict()


def register_algo_factory_func(algo_name: str):
    """Decorator: ``fn(algo_config) -> recipe name`` chooses the recipe of a robomimic algo name from its flags."""

    def decorator(fn):
        REGISTERED_ALGO_FACTORY_FUNCS[algo_name] = fn
        return fn

    return decorator


def algo_name_to_factory_func(algo_name: str):
    if algo_name not in REGISTERED_ALGO_FACTORY_FUNCS:
        raise ConfigError(f"unknown algo name {algo_name!r}{closest(algo_name, REGISTERED_ALGO_FACTORY_FUNCS)}; "
                          f"registered: {list(REGISTERED_ALGO_FACTORY_FUNCS)}")
    return REGISTERED_ALGO_FACTORY_FUNCS[algo_name]


@register_algo_factory_func("bc")
def bc_recipe_from_flags(algo_config) -> str:
    """robomimic's BC dispatch: gaussian, then gmm, then vae; RNN wins over transformer."""
    def on(section):
        return bool(algo_config.get(section) and algo_config[section].get("enabled"))

    rnn, tr = on("rnn"), on("transformer")
    if on("gaussian"):
        if rnn or tr:
            raise ConfigError("BC-Gaussian has no RNN/transformer variant (robomimic raises too)")
        return "bc_gaussian"
    if on("gmm"):
        return "bc_rnn_gmm" if rnn else "bc_transformer_gmm" if tr else "bc_gmm"
    if on("vae"):
        if rnn or tr:
            raise ConfigError("BC-VAE has no RNN/transformer variant (robomimic raises too)")
        return "bc_vae"
    return "bc_rnn" if rnn else "bc_transformer" if tr else "bc"


@register_algo_factory_func("bcq")
def bcq_recipe_from_flags(algo_config) -> str:
    """robomimic's BCQ dispatch: the distributional critic wins, then the GMM action sampler, else the VAE."""
    if algo_config.critic.distributional.enabled:
        return "bcq_distributional"
    if algo_config.action_sampler.gmm.enabled:
        return "bcq_gmm"
    if not algo_config.action_sampler.vae.enabled:
        raise ConfigError("BCQ needs an action sampler: enable algo.action_sampler.vae or algo.action_sampler.gmm")
    return "bcq"


@register_algo_factory_func("cql")
def cql_recipe_from_flags(algo_config) -> str:
    if algo_config.actor.net.type != "gaussian":
        raise ConfigError(f"CQL supports only algo.actor.net.type='gaussian' (robomimic too), got "
                          f"{algo_config.actor.net.type!r}")
    return "cql"


@register_algo_factory_func("iql")
def iql_recipe_from_flags(algo_config) -> str:
    kind = algo_config.actor.net.type
    if kind not in ("gaussian", "gmm"):
        raise ConfigError(f"IQL's algo.actor.net.type must be 'gaussian' or 'gmm', got {kind!r}")
    return "iql"


@register_algo_factory_func("td3_bc")
def td3_bc_recipe_from_flags(algo_config) -> str:
    return "td3_bc"


@register_algo_factory_func("awac")
def awac_recipe_from_flags(algo_config) -> str:
    """AWAC (not in robomimic): its settings checked before anything is built."""
    if algo_config.actor.net.type != "gaussian":
        raise ConfigError(f"AWAC's actor samples its next actions with their log-density: algo.actor.net.type must be "
                          f"'gaussian' (tanh-squashed), got {algo_config.actor.net.type!r}")
    adv = algo_config.adv
    if not adv.beta > 0:
        raise ConfigError(f"algo.adv.beta must be > 0, got {adv.beta}")
    if adv.max_weight is not None and not adv.max_weight > 0:
        raise ConfigError(f"algo.adv.max_weight must be > 0 or null (no clip), got {adv.max_weight}")
    if adv.num_action_samples < 1:
        raise ConfigError(f"algo.adv.num_action_samples must be >= 1, got {adv.num_action_samples}")
    return "awac"


@register_algo_factory_func("diffusion_policy")
def diffusion_policy_recipe_from_flags(algo_config) -> str:
    """robomimic's dispatch (``unet.enabled``), plus the transformer denoiser robomimic leaves unimplemented."""
    unet = bool(algo_config.get("unet") and algo_config.unet.enabled)
    tr = bool(algo_config.get("transformer") and algo_config.transformer.enabled)
    if unet == tr:
        raise ConfigError("diffusion_policy: enable exactly one denoiser, algo.unet.enabled or "
                          f"algo.transformer.enabled (got unet={unet}, transformer={tr})")
    if bool(algo_config.ddpm.enabled) == bool(algo_config.ddim.enabled):
        raise ConfigError("diffusion_policy: enable exactly one noise scheduler, algo.ddpm.enabled or "
                          "algo.ddim.enabled")
    return "diffusion_policy" if unet else "diffusion_transformer"


@register_algo_factory_func("act")
def act_recipe_from_flags(algo_config) -> str:
    """ACT (not in robomimic): its settings checked before anything is built."""
    a = algo_config.act
    for k in ("chunk_size", "embed_dim", "num_heads", "hidden_dim", "num_layers", "decoder.num_layers",
              "vae.num_layers", "vae.latent_dim"):
        v = OmegaConf.select(a, k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"algo.act.{k} must be a positive int, got {v!r}")
    if a.embed_dim % a.num_heads:
        raise ConfigError(f"algo.act.embed_dim ({a.embed_dim}) must be divisible by algo.act.num_heads "
                          f"({a.num_heads})")
    if not 0.0 <= a.dropout < 1.0:
        raise ConfigError(f"algo.act.dropout must be in [0, 1), got {a.dropout}")
    if not a.kl_weight >= 0:
        raise ConfigError(f"algo.act.kl_weight must be >= 0, got {a.kl_weight}")
    if not math.isfinite(a.temporal_ensemble_k):
        raise ConfigError(f"algo.act.temporal_ensemble_k must be a finite number, got {a.temporal_ensemble_k}")
    return "act"


@register_algo_factory_func("gl")
def gl_recipe_from_flags(algo_config) -> str:
    """robomimic's GL dispatch: the VAE planner when ``algo.vae.enabled`` (its default), else the deterministic one."""
    return "gl_vae" if algo_config.vae.enabled else "gl"


@register_algo_factory_func("hbc")
def hbc_recipe_from_flags(algo_config) -> str:
    """HBC: the planner's flavour (GL / GL-VAE) is chosen by ``algo.planner.vae.enabled`` inside the recipe."""
    if algo_config.mode not in ("separate", "cascade"):
        raise ConfigError(f"algo.mode must be 'separate' or 'cascade' (robomimic asserts this too), got "
                          f"{algo_config.mode!r}")
    if algo_config.latent_subgoal.enabled and not algo_config.planner.vae.enabled:
        raise ConfigError("algo.latent_subgoal.enabled needs a GL-VAE planner (algo.planner.vae.enabled=true)")
    return "hbc"


@register_algo_factory_func("iris")
def iris_recipe_from_flags(algo_config) -> str:
    if algo_config.mode not in ("separate", "cascade"):
        raise ConfigError(f"algo.mode must be 'separate' or 'cascade', got {algo_config.mode!r}")
    if not algo_config.value_planner.planner.vae.enabled:
        raise ConfigError("IRIS samples subgoals from a GL-VAE planner: algo.value_planner.planner.vae.enabled "
                          "must be true")
    return "iris"
