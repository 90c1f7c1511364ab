"""The robomimic ``Algo`` facade over a recipe.

``Algo`` builds what a recipe declares — networks (``nets``), target copies (``targets``), one optimizer and LR
scheduler per ``algo.optim_params.<net>``, no-grad shared quantities (``prepare``), loss modules (``losses``), the
ordered ``updates`` and the acting path (``act``) — and exposes robomimic's method set. ``train_on_batch`` runs the
updates in the recipe's order; nothing algorithm-specific lives here. ``HierarchicalAlgo`` is the same facade over a
recipe of sub-recipes (``components``: HBC, IRIS): one ``Algo`` per component, trained in the recipe's order.

Registry: ``register_algo_factory_func(name)`` registers ``fn(algo_config) -> recipe name`` for a robomimic algo
name (the variant is chosen by config flags, as in robomimic); ``algo_factory(algo_name, config, obs_key_shapes,
ac_dim, device)`` builds the algorithm.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from torch import nn

from modmimic import keys as K
from modmimic.config import ConfigError, closest, obs_keys, to_plain

REGISTERED_ALGO_FACTORY_FUNCS: "OrderedDict[str, callable]" = OrderedDict()


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or Inf; names the term."""


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


def resolve(path: str):
    """Import ``package.module.attr``."""
    mod, _, attr = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {path!r}: {e}") from None


def check_kwargs(fn, kwargs: dict, what: str) -> None:
    """Unknown keyword arguments are errors naming the closest parameter (no silent drops)."""
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    for k in kwargs:
        if k not in sig.parameters:
            raise ConfigError(f"{what}: unknown argument {k!r}{closest(k, sig.parameters)} for "
                              f"{getattr(fn, '__qualname__', fn)}")


# --- optimizers (robomimic optim_params) --------------------------------------------------------------------

def optimizer_from_params(params, optim_params: dict) -> torch.optim.Optimizer:
    kind = optim_params.get("optimizer_type", "adam")
    lr = optim_params["learning_rate"]["initial"]
    wd = (optim_params.get("regularization") or {}).get("L2", 0.0)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ConfigError(f"optimizer_type must be 'adam' or 'adamw', got {kind!r}")


def scheduler_from_params(optimizer, optim_params: dict, num_epochs: int | None = None,
                          num_train_batches: int | None = None):
    """robomimic's schedules: multistep (``MultiStepLR(epoch_schedule, decay_factor)``), linear (``LinearLR`` from 1
    to ``decay_factor`` over ``epoch_schedule[0]`` epochs), cosine (linear warmup then half cosine over
    ``num_epochs * num_train_batches`` batches; per batch). An empty schedule means none."""
    lr = optim_params["learning_rate"]
    kind = lr.get("scheduler_type", "multistep")
    schedule = list(lr.get("epoch_schedule") or [])
    if kind == "cosine":
        total = (num_epochs or 1) * (num_train_batches or 1)
        warmup = int(lr.get("warmup_steps", 0) or 0)

        def factor(step):
            if step < warmup:
                return (step + 1) / max(1, warmup)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if not schedule:
        return None
    if kind == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=schedule, gamma=lr["decay_factor"])
    if kind == "linear":
        return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=lr["decay_factor"],
                                                 total_iters=schedule[0])
    raise ConfigError(f"scheduler_type must be 'multistep', 'linear' or 'cosine', got {kind!r}")


# --- recipe pieces ------------------------------------------------------------------------------------------

@dataclass
class Loss:
    """A loss module bound to its networks and hyperparameters. A network argument bound to a disabled network
    (``nets.<name>.enabled: false``) receives ``None``. Functions that declare ``epoch`` / ``step`` parameters get
    the epoch / the global gradient step."""
    name: str
    fn: callable
    nets: dict
    kwargs: dict
    wants_epoch: bool
    wants_step: bool = False

    def __call__(self, batch, modules, epoch, step=0):
        extra = {"epoch": epoch} if self.wants_epoch else {}
        if self.wants_step:
            extra["step"] = step
        nets = {arg: (modules[n] if n is not None else None) for arg, n in self.nets.items()}
        return self.fn(batch, **nets, **self.kwargs, **extra)


@dataclass
class Update:
    """One optimizer step: (its own no-grad ``prepare``) -> weighted sum of losses -> backward -> (clip) -> step of
    every listed optimizer -> polyak of targets.

    ``optimizers``: the networks stepped (robomimic's per-network optimizers; several when one loss trains a network
    and, e.g., its learnable weight). ``max_grad_norm`` clips the first of them, each ensemble member separately
    with ``clip_per_member`` (robomimic steps every critic with its own optimizer). ``every = n``: the update runs on
    the n-th, 2n-th, ... step (robomimic's TD3 ``actor_update_counter % update_freq == 0`` after the increment)."""
    name: str
    losses: dict
    optimizers: list
    every: int = 1
    start_epoch: int = -1
    end_epoch: int = -1
    max_grad_norm: float | None = None
    clip_per_member: bool = False
    targets: list = field(default_factory=list)
    prepare: list = field(default_factory=list)

    @property
    def optimizer(self) -> str | None:
        return self.optimizers[0] if self.optimizers else None

    def active(self, epoch: int, step: int) -> bool:
        return ((self.start_epoch < 0 or epoch >= self.start_epoch)
                and (self.end_epoch < 0 or epoch < self.end_epoch) and (step + 1) % self.every == 0)


def _as_tuple_key(k):
    if isinstance(k, str) and "." in k:
        return tuple(k.split("."))
    return tuple(k) if isinstance(k, list) else k


def batch_from_robomimic(batch: dict) -> TensorDict:
    """A robomimic-style collated dict (``obs``, ``next_obs``, ``goal_obs``, ``actions``, ``rewards``,
    ``dones``) -> modmimic's TensorDict (``[B, T]`` when the actions have a time dim)."""
    acts = torch.as_tensor(batch["actions"])
    bs = acts.shape[:-1]
    out = {K.ACTION: acts.float()}
    out[K.OBS] = {k: torch.as_tensor(v).float() for k, v in batch["obs"].items()}
    nxt = {}
    if batch.get("next_obs") is not None:
        nxt[K.OBS] = {k: torch.as_tensor(v).float() for k, v in batch["next_obs"].items()}
    if batch.get("rewards") is not None:
        nxt["reward"] = torch.as_tensor(batch["rewards"]).float().reshape(*bs, 1)
        d = torch.as_tensor(batch["dones"]).reshape(*bs, 1) != 0
        nxt["done"], nxt["terminated"] = d, d
    if nxt:
        out[K.NEXT] = nxt
    if batch.get("goal_obs") is not None:
        g = {}
        for k, v in batch["goal_obs"].items():
            v = torch.as_tensor(v).float()
            g[k] = v.unsqueeze(1).expand(bs[0], bs[1], *v.shape[1:]) if len(bs) == 2 else v
        out[K.GOAL] = g
    return TensorDict(out, batch_size=bs)


def normalize_obs(td: TensorDict, stats: dict, groups=((K.OBS,), (K.NEXT, K.OBS), (K.GOAL,))) -> TensorDict:
    """``(x - offset) / scale`` for every observation entry with stats (robomimic ``normalize_dict``)."""
    td = td.clone(False)
    for g in groups:
        if g not in td.keys(include_nested=True):
            continue
        sub = td.get(g)
        for k in list(sub.keys()):
            if k in stats:
                off = torch.as_tensor(stats[k]["offset"], device=td.device).reshape(-1)
                sc = torch.as_tensor(stats[k]["scale"], device=td.device).reshape(-1)
                v = sub.get(k)
                sub.set(k, (v - off.reshape(v.shape[-1:])) / sc.reshape(v.shape[-1:]))
    return td


VALUE_FNS = ("state", "state_action")


def _from_spec(spec, nets, where: str):
    """``fn(nets, **kwargs)`` of a recipe's inference spec ``{fn: <dotted path>, **kwargs}``; bad arguments are
    configuration errors naming ``where``."""
    spec = to_plain(spec)
    cls = resolve(spec.pop("fn"))
    check_kwargs(cls, {"nets": None, **spec}, where)
    try:
        return cls(nets, **spec)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


class Algo:
    """A recipe built into networks, optimizers, losses and updates, with robomimic's ``Algo`` methods."""

    def __init__(self, config: DictConfig, obs_key_shapes: dict, ac_dim: int, device="cpu",
                 goal_shapes: dict | None = None):
        self._bind(config, obs_key_shapes, ac_dim, device)
        self.obs_shapes = self._shapes("obs")
        # goal_shapes: set by a hierarchical parent that feeds this component's goal (HBC rewires the actor's goal
        # to the planner's subgoals, robomimic does it at construction)
        self.goal_shapes = self._shapes("goal") if goal_shapes is None else dict(goal_shapes)
        self.subgoal_shapes = self._shapes("subgoal") if "subgoal" in config.observation.modalities else {}
        self.nets = nn.ModuleDict()
        self.target_specs = {}
        self.disabled = set()  # networks a recipe declares but turned off (nets.<name>.enabled: false)
        self._build_nets()
        self.nets.to(self.device)
        self.optimizers, self.lr_schedulers, self.step_every_batch = {}, {}, {}
        self._build_optimizers()
        self.batch_fn = self._bind_batch_fn()
        self.prepare = [self._bind_loss(f"prepare[{i}]", spec) for i, spec in enumerate(config.get("prepare") or [])]
        self.prepare_out = [_as_tuple_key(k) for spec in (config.get("prepare") or []) for k in (spec.get("out") or [])]
        self.losses = {n: self._bind_loss(n, spec) for n, spec in config.losses.items() if spec is not None}
        self.updates = [u for u in (self._bind_update(i, u) for i, u in enumerate(config.updates)) if u is not None]
        self._build_inference(self.nets)
        self._step = 0
        self.check_finite = True
        self._writes_batch = bool(self.prepare) or any(u.prepare for u in self.updates)
        self._opt_step = {}
        self._fresh_batch = None
        self._polyak_pairs = {}  # target -> (target params, source params, tau, buffer pairs), see soft_update
        if config.train.get("compile", False):
            self.compile()

    # --- construction ---------------------------------------------------------------------------------------
    def _bind(self, config: DictConfig, obs_key_shapes: dict, ac_dim: int, device) -> None:
        """The attributes robomimic's ``Algo`` exposes, shared by flat and hierarchical algorithms."""
        self.config = self.global_config = config
        self.algo_config, self.obs_config = config.algo, config.observation
        self.algo_name, self.recipe_name = config.algo_name, config.recipe_name
        self.device = torch.device(device)
        self.ac_dim = int(ac_dim)
        self.obs_key_shapes = {k: tuple(v) for k, v in obs_key_shapes.items()}

    def _build_inference(self, nets) -> None:
        """The acting path (``act``) and robomimic's ``ValueAlgo`` queries (``value_fns.state`` /
        ``value_fns.state_action``), each built from its spec ``{fn: <class>, **kwargs}`` over ``nets``."""
        self.act_path = _from_spec(self.config.act, nets, "act")
        fns = self.config.get("value_fns") or {}
        unknown = [k for k in fns if k not in VALUE_FNS]
        if unknown:
            raise ConfigError(f"value_fns.{unknown[0]}: unknown value query{closest(unknown[0], VALUE_FNS)}; "
                              f"value_fns has {', '.join(VALUE_FNS)}")
        self.value_fns = {k: _from_spec(v, nets, f"value_fns.{k}") for k, v in fns.items() if v is not None}

    def _shapes(self, group: str) -> dict:
        out = {}
        for k in obs_keys(self.config, group):
            if k not in self.obs_key_shapes:
                raise ConfigError(f"observation key {k!r} (observation.modalities.{group}) is not in the dataset; "
                                  f"dataset keys: {sorted(self.obs_key_shapes)}{closest(k, self.obs_key_shapes)}")
            out[k] = self.obs_key_shapes[k]
        return out

    def _build_nets(self):
        for name, spec in self.config.nets.items():
            if spec is None:
                continue
            spec = {k: v for k, v in to_plain(spec).items() if v is not None}
            if not spec.pop("enabled", True):
                self.disabled.add(name)
                continue
            builder = resolve(spec.pop("_target_"))
            kwargs = dict(obs_shapes=self.obs_shapes, ac_dim=self.ac_dim, goal_shapes=self.goal_shapes, **spec)
            if "subgoal_shapes" in inspect.signature(builder).parameters:
                kwargs.setdefault("subgoal_shapes", self.subgoal_shapes or None)
            check_kwargs(builder, kwargs, f"nets.{name}")
            try:
                self.nets[name] = builder(**kwargs)
            except ValueError as e:
                raise ConfigError(f"nets.{name}: {e}") from None
        for name, spec in (self.config.get("targets") or {}).items():
            if spec is None:
                continue
            src = spec.source
            if src in self.disabled:
                self.disabled.add(name)
                continue
            if src not in self.nets:
                raise ConfigError(f"targets.{name}: source network {src!r} does not exist (nets: {list(self.nets)})")
            tgt = copy.deepcopy(self.nets[src]).requires_grad_(False).eval()
            self.nets[name] = tgt
            self.target_specs[name] = (src, float(spec.get("tau", 0.005)))

    def _build_optimizers(self):
        optim_params = to_plain(self.algo_config.get("optim_params") or {})
        for name, p in optim_params.items():
            if name not in self.nets or name in self.target_specs:
                continue
            opt = optimizer_from_params(self.nets[name].parameters(), p)
            self.optimizers[name] = opt
            self.lr_schedulers[name] = scheduler_from_params(
                opt, p, p.get("num_epochs", self.config.train.num_epochs),
                p.get("num_train_batches", self.config.experiment.epoch_every_n_steps))
            self.step_every_batch[name] = bool(p["learning_rate"].get("step_every_batch", False)) or \
                p["learning_rate"].get("scheduler_type") == "cosine"

    def _bind_batch_fn(self):
        spec = to_plain(self.config.get("batch") or {"fn": "modmimic.components.batching.first_step"})
        fn = resolve(spec.pop("fn"))
        check_kwargs(fn, spec, "batch")
        return lambda b: fn(b, **spec)

    def _bind_loss(self, name, spec) -> Loss:
        spec = to_plain(spec)
        fn = resolve(spec.pop("fn"))
        nets = {a: n for a, n in (spec.pop("nets", None) or {}).items() if n is not None}
        spec.pop("out", None)
        # a null the function does not take is a key a variant recipe nulled out of its base: ignore it
        params = inspect.signature(fn).parameters
        spec = {k: v for k, v in spec.items() if v is not None or k in params}
        for arg, net in list(nets.items()):
            if net in self.disabled:
                nets[arg] = None
            elif net not in self.nets:
                raise ConfigError(f"losses.{name}: network {net!r} does not exist (nets: {list(self.nets)})")
        check_kwargs(fn, {**{a: None for a in nets}, **spec}, f"losses.{name}")
        return Loss(name, fn, nets, spec, "epoch" in params, "step" in params)

    def _bind_update(self, i, spec) -> Update | None:
        """An :class:`Update`, or None when it steps a disabled network (the update does not exist then)."""
        spec = to_plain(spec)
        name = spec.pop("name", f"update{i}")
        opts = spec.pop("optimizer", None)
        opts = [] if opts is None else [opts] if isinstance(opts, str) else list(opts)
        prepare = [self._bind_loss(f"updates[{i}].prepare[{j}]", p) for j, p in enumerate(spec.pop("prepare", None)
                                                                                           or [])]
        u = Update(name=name, losses=dict(spec.pop("losses")), optimizers=opts,
                   every=int(spec.pop("every", 1) or 1), start_epoch=int(spec.pop("start_epoch", -1)),
                   end_epoch=int(spec.pop("end_epoch", -1)), max_grad_norm=spec.pop("max_grad_norm", None),
                   clip_per_member=bool(spec.pop("clip_per_member", False)),
                   targets=list(spec.pop("targets", None) or []), prepare=prepare)
        if spec:
            raise ConfigError(f"updates[{i}] ({name}): unknown keys {sorted(spec)}; expected name, losses, "
                              "optimizer, every, start_epoch, end_epoch, max_grad_norm, clip_per_member, targets, "
                              "prepare")
        if u.optimizers and u.optimizers[0] in self.disabled:
            return None
        for opt in u.optimizers:
            if opt not in self.optimizers:
                raise ConfigError(f"updates[{i}] ({name}): no optimizer for network {opt!r}; add "
                                  f"algo.optim_params.{opt}")
        u.targets = [t for t in u.targets if t not in self.disabled]
        for t in u.targets:
            if t not in self.target_specs:
                raise ConfigError(f"updates[{i}] ({name}): {t!r} is not a target network "
                                  f"(targets: {list(self.target_specs)})")
        return u

    # --- robomimic Algo API ----------------------------------------------------------------------------------
    def process_batch_for_training(self, batch):
        """Window batch (modmimic TensorDict or robomimic dict) -> the recipe's training batch on the device."""
        if not isinstance(batch, TensorDict):
            batch = batch_from_robomimic(batch)
        if batch.device != self.device:
            batch = batch.to(self.device)
        out = self.batch_fn(batch)
        # a batch built here is this step's own: train_on_batch may write into it without copying it first
        self._fresh_batch = id(out) if out is not batch else None
        return out

    def postprocess_batch_for_training(self, batch, obs_normalization_stats=None):
        """robomimic's obs normalization hook. modmimic's sampler already serves normalized observations; pass stats
        only for batches that come from elsewhere (e.g. a raw robomimic DataLoader)."""
        return batch if obs_normalization_stats is None else normalize_obs(batch, obs_normalization_stats)

    def train_on_batch(self, batch, epoch: int, validate: bool = False) -> dict:
        """Run the recipe's updates in order on one batch; with ``validate`` compute losses without stepping.

        ``prepare`` functions write shared no-grad quantities into (a shallow copy of) the batch once, before the
        updates; an update's own ``prepare`` runs right before it, so it sees the networks the earlier updates of
        this step have just changed."""
        info = {}
        total = None
        step = self._step
        with torch.set_grad_enabled(not validate):
            if self._writes_batch and id(batch) != self._fresh_batch:
                batch = batch.clone(False)
            self._fresh_batch = None
            if self.prepare:
                self._run_prepare(self.prepare, batch, epoch, step)
            for u in self.updates:
                if not u.active(epoch, step):
                    continue
                if u.prepare:
                    self._run_prepare(u.prepare, batch, epoch, step)
                loss = None
                for lname, weight in u.losses.items():
                    out = self.losses[lname](batch, self.nets, epoch, step)
                    term = out["loss"]
                    if self.check_finite and not bool(torch.isfinite(term)):
                        raise NonFiniteLossError(
                            f"loss {lname!r} (update {u.name!r}) is {term.item()} at epoch {epoch}, step {step}")
                    loss = weight * term if loss is None else loss + weight * term
                    for k, v in out.items():
                        info[f"{lname}/{k}"] = v.detach() if torch.is_tensor(v) else v
                total = loss.detach() if total is None else total + loss.detach()
                if not validate and u.optimizers:
                    self._step_update(u, loss, info)
        if total is not None:
            info["Loss"] = total
        if not validate:
            self._step += 1
            self.on_gradient_step()
        return info

    def compile(self) -> None:
        """``train.compile``: every prepare and loss function, and every optimizer step, through ``torch.compile``
        (the backward of a compiled loss is compiled too). The first steps are slow while graphs compile."""
        backend = self.config.train.get("compile_backend", "inductor")
        bound = [*self.prepare, *self.losses.values(), *(p for u in self.updates for p in u.prepare)]
        for b in bound:
            if not getattr(b.fn, "_modmimic_compiled", False):
                b.fn = torch.compile(b.fn, backend=backend)
                b.fn._modmimic_compiled = True
        # every optimizer's step is the same code object guarded on the instance: allow one graph per optimizer
        import torch._dynamo as dynamo  # (binds only ``dynamo``: a bare ``import torch._dynamo`` shadows ``torch``)

        cfg = dynamo.config
        cfg.recompile_limit = max(cfg.recompile_limit, 8 * len(self.optimizers) + 8)
        self._opt_step = {k: torch.compile(o.step, backend=backend) for k, o in self.optimizers.items()}

    def _run_prepare(self, prepare, batch, epoch, step) -> None:
        with torch.no_grad():
            for p in prepare:
                for k, v in p(batch, self.nets, epoch, step).items():
                    batch.set(_as_tuple_key(k), v)

    def _step_update(self, u: Update, loss, info: dict) -> None:
        opts = [self.optimizers[o] for o in u.optimizers]
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if u.max_grad_norm is not None:
            net = self.nets[u.optimizers[0]]
            if u.clip_per_member and hasattr(net, "clip_grad_norm_per_member_"):  # stacked ensemble members
                norms = net.clip_grad_norm_per_member_(u.max_grad_norm)
                for i in range(len(norms)):
                    info[f"{u.name}/grad_norm{i + 1 if len(norms) > 1 else ''}"] = norms[i]
                groups = []
            else:
                groups = list(net.members) if u.clip_per_member and hasattr(net, "members") else [net]
            for i, g in enumerate(groups):
                suffix = str(i + 1) if len(groups) > 1 else ""
                info[f"{u.name}/grad_norm{suffix}"] = torch.nn.utils.clip_grad_norm_(g.parameters(), u.max_grad_norm)
        for name, opt in zip(u.optimizers, opts):
            self._opt_step.get(name, opt.step)()
        for t in u.targets:
            self.soft_update(t)

    @torch.no_grad()
    def soft_update(self, target: str) -> None:
        """Polyak: ``target <- (1 - tau) * target + tau * source``."""
        pairs = self._polyak_pairs.get(target)
        if pairs is None:  # listing a module's parameters costs more than the lerp of small nets: list them once
            src, tau = self.target_specs[target]
            t, s = self.nets[target], self.nets[src]
            pairs = self._polyak_pairs[target] = (list(t.parameters()), list(s.parameters()), tau,
                                                  list(zip(t.buffers(), s.buffers())))
        tp, sp, tau, bufs = pairs
        torch._foreach_lerp_(tp, sp, tau)
        for tb, sb in bufs:
            tb.copy_(sb)

    def on_gradient_step(self) -> None:
        for k, sch in self.lr_schedulers.items():
            if sch is not None and self.step_every_batch[k]:
                sch.step()

    def on_epoch_end(self, epoch: int) -> None:
        for k, sch in self.lr_schedulers.items():
            if sch is not None and not self.step_every_batch[k]:
                sch.step()

    def learning_rates(self, prefix: str = "") -> dict:
        """``{"Optimizer/<prefix><net>0_lr": lr}`` (robomimic's names; a component's prefix is ``Actor/`` etc.)."""
        return {f"Optimizer/{prefix}{k}0_lr": opt.param_groups[0]["lr"] for k, opt in self.optimizers.items()}

    def log_info(self, info: dict) -> dict:
        out = {k: (v.item() if torch.is_tensor(v) else float(v)) for k, v in info.items()}
        out.update(self.learning_rates())
        return out

    def set_train(self) -> None:
        self.nets.train()
        for t in self.target_specs:
            self.nets[t].eval()

    def set_eval(self) -> None:
        self.nets.eval()

    def serialize(self) -> dict:
        return {"nets": self.nets.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "lr_schedulers": {k: (s.state_dict() if s is not None else None) for k, s in self.lr_schedulers.items()},
                "step": self._step}

    def deserialize(self, model_dict: dict, load_optimizers: bool = False) -> None:
        if "nets" not in model_dict:  # robomimic: a bare state_dict of the nets
            model_dict = {"nets": model_dict}
        self._polyak_pairs = {}
        try:
            self.nets.load_state_dict(model_dict["nets"])
        except RuntimeError as e:
            raise ConfigError(f"checkpoint weights do not fit recipe {self.recipe_name!r}: {e}") from None
        if load_optimizers:
            for k, o in self.optimizers.items():
                o.load_state_dict(model_dict["optimizers"][k])
            for k, s in self.lr_schedulers.items():
                if s is not None and model_dict["lr_schedulers"].get(k) is not None:
                    s.load_state_dict(model_dict["lr_schedulers"][k])
            self._step = int(model_dict.get("step", 0))

    def _obs_td(self, obs_dict, goal_dict=None) -> TensorDict:
        if isinstance(obs_dict, TensorDict):
            td = obs_dict if K.OBS in obs_dict.keys() else TensorDict({K.OBS: obs_dict}, obs_dict.batch_size)
        else:
            obs = {k: torch.as_tensor(v, dtype=torch.float32, device=self.device) for k, v in obs_dict.items()
                   if k in self.obs_shapes or k in self.goal_shapes}
            B = next(iter(obs.values())).shape[0]
            td = TensorDict({K.OBS: obs}, batch_size=[B], device=self.device)
        if goal_dict is not None:
            g = {k: torch.as_tensor(v, dtype=torch.float32, device=self.device) for k, v in goal_dict.items()
                 if k in self.goal_shapes}
            td[K.GOAL] = TensorDict(g, batch_size=td.batch_size, device=self.device)
        return td.to(self.device)

    @torch.no_grad()
    def get_action(self, obs_dict, goal_dict=None) -> torch.Tensor:
        """Actions ``[B, A]`` for a batch of observations (dict of ``[B, ...]`` tensors or a TensorDict)."""
        return self.act_path(self._obs_td(obs_dict, goal_dict))

    @torch.no_grad()
    def get_state_value(self, obs_dict, goal_dict=None) -> torch.Tensor:
        """robomimic ``ValueAlgo.get_state_value``: ``V(s)`` ``[B, 1]`` as the recipe defines it (``value_fns.state``:
        IQL's value network; CQL/TD3-BC ``Q_1(s, actor(s))``; BCQ and IRIS the best sampled action's ``Q_1``)."""
        return self._value_fn("state")(self._obs_td(obs_dict, goal_dict))

    @torch.no_grad()
    def get_state_action_value(self, obs_dict, actions, goal_dict=None) -> torch.Tensor:
        """robomimic ``ValueAlgo.get_state_action_value``: ``Q(s, a)`` ``[B, 1]`` (``value_fns.state_action``: the
        first critic of the ensemble, as robomimic)."""
        a = torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        return self._value_fn("state_action")(self._obs_td(obs_dict, goal_dict), a)

    def _value_fn(self, kind: str):
        if kind not in self.value_fns:
            raise NotImplementedError(f"recipe {self.recipe_name!r} declares no value_fns.{kind}: it is not a value "
                                      f"algorithm (robomimic ValueAlgo: BCQ, CQL, IQL, TD3-BC, ValuePlanner, IRIS)")
        return self.value_fns[kind]

    def reset(self, batch_size: int = 1, done=None) -> None:
        """Per-episode state reset (RNN hidden state, context, subgoal): all environments, or where ``done``."""
        self.act_path.reset(batch_size, done)

    def __repr__(self) -> str:
        return f"Algo(recipe={self.recipe_name!r}, algo_name={self.algo_name!r})\n{self.nets}"


class NetPaths:
    """The networks of a hierarchical algorithm by path: ``nets["actor.policy"]`` is the ``policy`` network of the
    ``actor`` component (nested components: ``"value_planner.value.critic"``). Read-only."""

    def __init__(self, nets: nn.ModuleDict):
        self.nets = nets

    def __getitem__(self, path: str) -> nn.Module:
        try:
            return self.nets.get_submodule(str(path))
        except AttributeError:
            raise KeyError(path) from None

    def __contains__(self, path) -> bool:
        try:
            self[path]
            return True
        except KeyError:
            return False

    def __iter__(self):
        return iter(self.nets)

    def __repr__(self) -> str:
        return f"NetPaths({list(self.nets)})"


class HierarchicalAlgo(Algo):
    """A recipe of sub-recipes (robomimic ``HierarchicalAlgo``: HBC, IRIS, and IRIS's ValuePlanner).

    Each ``components.<name>`` is built as its own algorithm from :func:`~modmimic.config.component_config` (its
    ``algo.<name>``/``observation.<name>`` sections; the variant chosen by its algo's flags, as robomimic's
    sub-factories do), with its networks, optimizers, schedulers, batch and updates. ``nets`` holds them as
    ``nets[<name>]``; recipes name a component's network by path (``actor.policy``).

    * ``process_batch_for_training``: one batch per component from the same windows, ``batch[<name>]``.
    * ``train_on_batch``: the recipe's ``updates`` list which component trains, in order; an entry's ``prepare``
      (no grad, over every network by path) writes into the whole batch right before that component trains
      (HBC cascade: the actor's subgoals from the planner just updated). Logs are prefixed with each component's
      ``log_prefix`` (``Planner/...``, ``Actor/...``); ``Loss`` is the sum of the components'.
    * ``goal_shapes_from: <net path>``: the component's goal shapes are that network's ``actor_goal_shapes`` (the
      HBC actor reads the planner's subgoal keys, or its latent).
    * checkpoints: ``nets`` is one state dict; optimizers, schedulers and step counters are nested by component.
    """

    def __init__(self, config: DictConfig, obs_key_shapes: dict, ac_dim: int, device="cpu",
                 goal_shapes: dict | None = None):
        from modmimic.config import component_config

        self._bind(config, obs_key_shapes, ac_dim, device)
        self.nets = nn.ModuleDict()
        self.paths = NetPaths(self.nets)
        self.components, self.log_prefixes = OrderedDict(), {}
        fed = set()
        for name, spec in config.components.items():
            if spec is None:
                continue
            sub_cfg = _with_component_variant(config, name, component_config(config, name))
            gs = None
            if spec.get("goal_shapes_from"):
                src = str(spec.goal_shapes_from)
                if src not in self.paths:
                    raise ConfigError(f"components.{name}.goal_shapes_from: no network {src!r} among the components "
                                      f"built before {name!r} ({list(self.components)})")
                gs = dict(self.paths[src].actor_goal_shapes)
                fed.add(name)
            shapes = {**self.obs_key_shapes, **(gs or {})}
            cls = HierarchicalAlgo if sub_cfg.get("components") else Algo
            try:
                sub = cls(sub_cfg, shapes, ac_dim, device, goal_shapes=gs)
            except ConfigError as e:
                raise ConfigError(f"component {name!r} ({sub_cfg.recipe_name}): {e}") from None
            self.components[name] = sub
            self.nets[name] = sub.nets
            self.log_prefixes[name] = str(spec.get("log_prefix") or name)
        self.obs_shapes, self.goal_shapes, self.subgoal_shapes = {}, {}, {}
        for name, sub in self.components.items():
            self.obs_shapes.update(sub.obs_shapes)
            self.subgoal_shapes.update(sub.subgoal_shapes)
            if name not in fed:  # an environment goal (not a subgoal a planner feeds)
                self.goal_shapes.update(sub.goal_shapes)
        self.target_specs, self.disabled = {}, set()
        # every component's optimizers and schedulers by network path (checkpoints nest them by component)
        self.optimizers = {f"{n}.{k}": o for n, sub in self.components.items() for k, o in sub.optimizers.items()}
        self.lr_schedulers = {f"{n}.{k}": s for n, sub in self.components.items() for k, s in sub.lr_schedulers.items()}
        self.steps = []
        for i, u in enumerate(config.updates):
            u = to_plain(u)
            name = u.pop("component")
            prepare = [self._bind_loss(f"updates[{i}].prepare[{j}]", p) for j, p in enumerate(u.pop("prepare", None)
                                                                                                 or [])]
            if u:
                raise ConfigError(f"updates[{i}] (component {name!r}): unknown keys {sorted(u)}; a hierarchical "
                                  "recipe's update names a component and an optional prepare list")
            self.steps.append((name, prepare))
        self.prepare = []
        self._build_inference(self.paths)
        self._step = 0
        self.check_finite = True
        self._writes_batch = any(p for _, p in self.steps)
        self._fresh_batch = None

    def _bind_loss(self, name, spec) -> Loss:
        spec = to_plain(spec)
        fn = resolve(spec.pop("fn"))
        nets = {a: n for a, n in (spec.pop("nets", None) or {}).items() if n is not None}
        spec.pop("out", None)
        for arg, net in nets.items():
            if net not in self.paths:
                raise ConfigError(f"{name}: network {net!r} does not exist (components: {list(self.components)}; "
                                  "name a component's network by path, e.g. planner.goal_network)")
        check_kwargs(fn, {**{a: None for a in nets}, **spec}, name)
        params = inspect.signature(fn).parameters
        return Loss(name, fn, nets, spec, "epoch" in params, "step" in params)

    def _run_prepare(self, prepare, batch, epoch, step) -> None:
        with torch.no_grad():
            for p in prepare:
                for k, v in p(batch, self.paths, epoch, step).items():
                    batch.set(_as_tuple_key(k), v)

    # --- robomimic Algo API ----------------------------------------------------------------------------------
    def process_batch_for_training(self, batch):
        """One training batch per component from the same windows: ``{<name>: component batch}``."""
        if not isinstance(batch, TensorDict):
            batch = batch_from_robomimic(batch)
        if batch.device != self.device:
            batch = batch.to(self.device)
        parts = {name: sub.process_batch_for_training(batch) for name, sub in self.components.items()}
        out = TensorDict(parts, batch_size=batch.batch_size[:1], device=self.device)
        for name, sub in self.components.items():  # the parts stay the components' own fresh batches
            sub._fresh_batch = id(out.get(name)) if sub._fresh_batch is not None else None
        self._fresh_batch = id(out)
        return out

    def train_on_batch(self, batch, epoch: int, validate: bool = False) -> dict:
        info, total = {}, None
        with torch.set_grad_enabled(not validate):
            if self._writes_batch and id(batch) != self._fresh_batch:
                batch = batch.clone(False)
            self._fresh_batch = None
            for name, prepare in self.steps:
                if prepare:
                    self._run_prepare(prepare, batch, epoch, self._step)
                try:
                    out = self.components[name].train_on_batch(batch.get(name), epoch, validate=validate)
                except NonFiniteLossError as e:
                    raise NonFiniteLossError(f"component {name!r} ({self.components[name].recipe_name}): {e}") from None
                prefix = self.log_prefixes[name]
                for k, v in out.items():
                    info[f"{prefix}/{k}"] = v
                if "Loss" in out:
                    total = out["Loss"] if total is None else total + out["Loss"]
        if total is not None:
            info["Loss"] = total
        if not validate:
            self._step += 1
        return info

    def compile(self) -> None:
        for sub in self.components.values():
            sub.compile()

    def on_gradient_step(self) -> None:
        pass  # each component steps its own per-batch schedulers in its train_on_batch

    def on_epoch_end(self, epoch: int) -> None:
        for sub in self.components.values():
            sub.on_epoch_end(epoch)

    def learning_rates(self, prefix: str = "") -> dict:
        out = {}
        for name, sub in self.components.items():
            out.update(sub.learning_rates(f"{prefix}{self.log_prefixes[name]}/"))
        return out

    def set_train(self) -> None:
        for sub in self.components.values():
            sub.set_train()

    def set_eval(self) -> None:
        for sub in self.components.values():
            sub.set_eval()

    @property
    def check_finite(self) -> bool:
        return self._check_finite

    @check_finite.setter
    def check_finite(self, value: bool) -> None:
        self._check_finite = bool(value)
        for sub in self.components.values():
            sub.check_finite = bool(value)

    def serialize(self) -> dict:
        """``nets``: one state dict (``<component>.<net>.*``); optimizers, schedulers and steps by component."""
        parts = {name: sub.serialize() for name, sub in self.components.items()}
        return {"nets": self.nets.state_dict(),
                "optimizers": {n: p["optimizers"] for n, p in parts.items()},
                "lr_schedulers": {n: p["lr_schedulers"] for n, p in parts.items()},
                "step": {"self": self._step, **{n: p["step"] for n, p in parts.items()}}}

    def deserialize(self, model_dict: dict, load_optimizers: bool = False) -> None:
        if "nets" not in model_dict:
            model_dict = {"nets": model_dict}
        nets = model_dict["nets"]
        try:
            self.nets.load_state_dict(nets)
        except RuntimeError as e:
            raise ConfigError(f"checkpoint weights do not fit recipe {self.recipe_name!r}: {e}") from None
        for name, sub in self.components.items():
            part = {"nets": {k[len(name) + 1:]: v for k, v in nets.items() if k.startswith(name + ".")}}
            if load_optimizers:
                part.update(optimizers=model_dict["optimizers"][name], lr_schedulers=model_dict["lr_schedulers"][name],
                            step=model_dict["step"][name])
            sub.deserialize(part, load_optimizers=load_optimizers)
        if load_optimizers:
            self._step = int(model_dict["step"]["self"])

    # --- robomimic HierarchicalAlgo / PlannerAlgo -------------------------------------------------------------
    @torch.no_grad()
    def get_subgoal_predictions(self, obs_dict, goal_dict=None) -> TensorDict:
        """The planner's subgoal for a batch of observations: ``[B]`` TensorDict of ``("subgoal", k)``."""
        planner = getattr(self.act_path, "planner", None)
        if planner is None:
            raise RuntimeError(f"recipe {self.recipe_name!r} has no planner in its acting path")
        planner = self.paths[planner] if isinstance(planner, str) else planner
        return planner.get_subgoal_predictions(self._obs_td(obs_dict, goal_dict))

    @property
    def current_subgoal(self):
        """The subgoal each environment follows now (``[B]`` TensorDict), or None before the first action."""
        return getattr(self.act_path, "current_subgoal", None)

    def __repr__(self) -> str:
        parts = "\n".join(f"  {n} ({s.recipe_name}): {s!r}".replace("\n", "\n  ") for n, s in self.components.items())
        return f"HierarchicalAlgo(recipe={self.recipe_name!r}, algo_name={self.algo_name!r})\n{parts}"


def _component_overrides(config: DictConfig, name: str) -> dict:
    """The structure a hierarchical recipe file sets on component ``name`` (beyond naming its sub-recipe), resolved
    in ``config``: what a component keeps when its flags select another variant of its sub-recipe."""
    from modmimic.config import STRUCTURE_SECTIONS, recipes_dir

    path = recipes_dir() / f"{config.recipe_name}.yaml"
    if not path.exists():
        return {}
    spec = (OmegaConf.load(path).get("components") or {}).get(name) or {}
    own = {k: v for k, v in spec.items() if k in STRUCTURE_SECTIONS}
    if not own:
        return {}
    probe = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
    OmegaConf.set_struct(probe, False)
    probe["_component_overrides"] = own
    return OmegaConf.to_container(probe["_component_overrides"], resolve=True)


def _with_component_variant(config: DictConfig, name: str, sub_cfg: DictConfig) -> DictConfig:
    """robomimic's sub-factories: a component's algo flags pick its variant (``algo.planner.vae.enabled=false`` ->
    the ``gl`` planner); the variant's structure then gets the parent recipe's overrides for the component."""
    from modmimic.config import validate, with_recipe_structure

    factory = REGISTERED_ALGO_FACTORY_FUNCS.get(sub_cfg.algo_name)
    if factory is None:
        return sub_cfg
    recipe = factory(sub_cfg.algo)
    if recipe == sub_cfg.recipe_name:
        return sub_cfg
    out = with_recipe_structure(sub_cfg, recipe)
    OmegaConf.set_struct(out, False)
    out = OmegaConf.merge(out, _component_overrides(config, name))
    validate(out, f"{name}.")
    OmegaConf.set_struct(out, True)
    return out


def algo_factory(algo_name: str, config: DictConfig, obs_key_shapes: dict, ac_dim: int, device="cpu") -> Algo:
    """robomimic's ``algo_factory``. The recipe is chosen by the algo name's factory function from the config's
    flags (e.g. ``bc`` with ``algo.rnn.enabled`` is ``bc_rnn``); if that differs from the recipe the config was
    composed from, the chosen recipe's structure is used with the config's values. Hierarchical recipes (with
    ``components``) build a :class:`HierarchicalAlgo`."""
    if algo_name != config.algo_name:
        raise ConfigError(f"algo_factory got algo name {algo_name!r} but the config is for {config.algo_name!r}")
    if algo_name in REGISTERED_ALGO_FACTORY_FUNCS:
        recipe = REGISTERED_ALGO_FACTORY_FUNCS[algo_name](config.algo)
        if recipe != config.recipe_name:
            from modmimic.config import with_recipe_structure

            config = with_recipe_structure(config, recipe)
    cls = HierarchicalAlgo if config.get("components") else Algo
    return cls(config, obs_key_shapes, ac_dim, device)
