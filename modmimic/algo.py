"""The robomimic ``Algo`` facade over a recipe compiled into a program.

:class:`Builder` compiles a recipe — networks (``nets``), target copies (``targets``), one optimizer and LR scheduler
per ``algo.optim_params.<net>``, no-grad shared quantities (``prepare``), loss functions (``losses``), the ordered
``updates`` and, for hierarchical recipes, ``components`` — into one flat :class:`~modmimic.program.Program`
(networks and optimizers by path, an ordered list of steps with declared keys, checked before anything runs).
:class:`Algo` exposes robomimic's method set over it: ``train_on_batch`` is :func:`~modmimic.program.run_step`;
nothing algorithm-specific lives here. A hierarchical recipe's components (HBC's planner and actor, IRIS's value
planner) are views of the same program (``algo.components[<name>]``).

Registry: ``register_algo_factory_func(name)`` registers ``fn(algo_config) -> recipe name`` for a robomimic algo
name (the variant is chosen by config flags, as in robomimic); ``algo_factory(algo_name, config, obs_key_shapes,
ac_dim, device)`` builds the algorithm.
"""
from __future__ import annotations

import copy
import inspect
import math
from collections import OrderedDict

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from torch import nn

from modmimic import keys as K
from modmimic import trust as _trust
from modmimic.program import (Call, NonFiniteLossError, Prepare, Program, Update, check_keys, ema_decay, run_step,
                              soft_update)
from modmimic.config import ConfigError, closest, obs_keys, to_plain
from modmimic.components.nets.core import encoder_spec

# robomimic's algo-name dispatch (``algo_factory`` picks a recipe from an algo name's flags): modmimic.variants
from modmimic.variants import (REGISTERED_ALGO_FACTORY_FUNCS, algo_name_to_factory_func,  # noqa: F401
                               register_algo_factory_func)
from modmimic.variants import bc_recipe_from_flags  # noqa: F401  (robomimic API name)


def resolve(path: str, trusted="scope"):
    """Import ``package.module.attr``. ``trusted``: the modules it may come from (default: the current
    :func:`modmimic.trust.trusting` scope, which a config read from a checkpoint or run directory narrows to
    ``modmimic.*``; ``None``: anywhere). See :mod:`modmimic.trust`."""
    return _trust.resolve(path, trusted)


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

def optimizer_from_params(params, optim_params: dict, fused: bool = False) -> torch.optim.Optimizer:
    """robomimic's optimizer of ``optim_params``: torch's ``foreach`` implementation (one call per operation over
    all the tensors instead of a Python loop over them; torch's default on GPUs; on a CPU the same kernels on each
    tensor, so bit for bit the per-tensor loop's update, at ~20 % less time). ``fused`` (``train.fused_optimizer``):
    torch's fused kernel, the same update up to float rounding."""
    kind = optim_params.get("optimizer_type", "adam")
    lr = optim_params["learning_rate"]["initial"]
    wd = (optim_params.get("regularization") or {}).get("L2", 0.0)
    kw = {"fused": True} if fused else {"foreach": True}
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **kw)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **kw)
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


# --- compiling a recipe into a program ---------------------------------------------------------------------------

def _join(scope: tuple, name: str) -> str:
    return ".".join((*scope, name))


def bind_call(where: str, spec, nets_at, disabled=(), batch_fn: bool = False) -> Call:
    """A recipe entry ``{fn: <dotted path>, nets: {arg: net}, **kwargs}`` bound into a :class:`Call`.

    ``nets_at(name) -> (module, path)`` finds a network (KeyError when there is none); a network in ``disabled`` is
    passed as None. Unknown arguments, undeclared context arguments and networks lacking a declared distribution
    operation are configuration errors naming ``where``."""
    spec = to_plain(spec)
    fn = resolve(spec.pop("fn"))
    net_names = {a: n for a, n in (spec.pop("nets", None) or {}).items()} if not batch_fn else {}
    nets, paths = {}, {}
    for arg, name in net_names.items():
        if name is None or name in disabled:
            nets[arg] = None
            continue
        try:
            nets[arg], paths[arg] = nets_at(name)
        except KeyError as e:
            raise ConfigError(f"{where}: network {name!r} does not exist ({e.args[0]})") from None
    params = inspect.signature(fn).parameters
    context = tuple(getattr(fn, "context", ()))
    for c in ("epoch", "step"):
        if c in params and c not in context and c not in spec:
            raise ConfigError(f"{where}: {getattr(fn, '__qualname__', fn)} takes {c!r} but does not declare it: "
                              f"decorate it with modmimic.keys.declare(context=({c!r},))")
    check_kwargs(fn, {**{a: None for a in nets}, **spec, **{c: None for c in context}}, where)
    bound = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    bound.update(spec)
    for arg, ops in getattr(fn, "needs", {}).items():
        net = nets.get(arg)
        have = getattr(net, "distribution_ops", None) if net is not None else None
        missing = [o for o in ops if have is not None and o not in have]
        if missing:
            raise ConfigError(f"{where}: {getattr(fn, '__qualname__', fn)} needs {', '.join(missing)} from the "
                              f"distribution of network {net_names[arg]!r} ({type(net).__name__}), which offers only "
                              f"{', '.join(sorted(have)) or 'none'}")
    return Call(where, fn, nets, spec, paths, context, K.bound_keys(getattr(fn, "reads", ()), bound),
                K.bound_keys(getattr(fn, "writes", ()), bound))


def data_keys(config: DictConfig) -> list:
    """The keys the window sampler provides for ``config`` (what the first step of a program may read)."""
    t = config.train
    out = [K.OBS, K.ACTION, K.MASK, K.IS_INIT, K.INDEX, K.EPISODE]
    if t.get("hdf5_load_next_obs", True):
        out.append((K.NEXT, K.OBS))
    if "rewards" in (config.get("requires") or []) or "rewards" in list(t.get("dataset_keys") or []):
        out += [K.REWARD, K.DONE, K.TERMINATED]
    if t.get("goal_mode"):
        out.append(K.GOAL)
    if (config.get("task") or {}).get("conditioning") not in (None, "none", "None"):
        out += [K.TASK_ID, K.TASK_EMB]  # multi-task runs (modmimic.tasks)
    return out


class Builder:
    """Compiles a (possibly hierarchical) recipe config into a :class:`Program` (see :mod:`modmimic.program`)."""

    def __init__(self, config: DictConfig, obs_key_shapes: dict, ac_dim: int, device, task_dim: int | None = None):
        self.root, self.ac_dim, self.device = config, int(ac_dim), torch.device(device)
        self.task_dim = task_conditioning_dim(config, task_dim)
        self.task_nets, self.task_blind = [], []  # networks built with / without the task input
        self.obs_key_shapes = {k: tuple(v) for k, v in obs_key_shapes.items()}
        self.program = Program(recipe=str(config.recipe_name), nets=nn.ModuleDict(), data_keys=data_keys(config))
        self.shapes = {}  # scope -> {"obs": ..., "goal": ..., "subgoal": ...}
        self.recipes = {}  # scope -> recipe name
        self.configs = {}  # scope -> the component's config

    def net_at(self, scope: tuple):
        def find(name):
            if name in self.program.disabled:
                raise KeyError(f"{name!r} is disabled")
            path = _join(scope, name) if scope else name
            for p in (path, name):  # a component's own network, or any network by its full path
                try:
                    return self.program.net(p), p
                except AttributeError:
                    continue
            raise KeyError(f"networks: {sorted(self._paths())}")

        return find

    def _paths(self):
        return [n for n, m in self.program.nets.named_modules() if n and not n.count(".") > 3]

    def build(self, config: DictConfig, scope: tuple = (), prefix: str = "", goal_shapes=None) -> None:
        if config.get("components"):
            return self._build_hierarchical(config, scope, prefix)
        where = lambda s: f"{'/'.join(scope) + '/' if scope else ''}{s}"  # noqa: E731
        shapes = {"obs": self._shapes(config, "obs"),
                  "goal": self._shapes(config, "goal") if goal_shapes is None else dict(goal_shapes),
                  "subgoal": self._shapes(config, "subgoal") if "subgoal" in config.observation.modalities else {}}
        self.shapes[scope], self.recipes[scope], self.configs[scope] = shapes, str(config.recipe_name), config
        nets = self._nets_at(scope)
        self._build_nets(config, scope, nets, shapes, where)
        self._build_optimizers(config, scope)
        bspec = config.get("batch") or {"fn": "modmimic.components.batching.first_step"}
        self.program.batch.append((scope, bind_call(where("batch"), bspec, None, batch_fn=True)))
        p = self.program
        net_at = self.net_at(scope)
        prepare = [bind_call(where(f"prepare[{i}]"), s, net_at, self._disabled(scope))
                   for i, s in enumerate(config.get("prepare") or [])]
        if prepare:
            p.steps.append(Prepare(where("prepare"), prepare, scope))
        losses = {n: bind_call(where(f"losses.{n}"), s, net_at, self._disabled(scope))
                  for n, s in config.losses.items() if s is not None}
        for i, spec in enumerate(config.updates):
            self._bind_update(i, spec, scope, prefix, losses, where)

    def _nets_at(self, scope: tuple) -> nn.ModuleDict:
        nets = self.program.nets
        for s in scope:
            if s not in nets:
                nets[s] = nn.ModuleDict()
            nets = nets[s]
        return nets

    def _disabled(self, scope):
        return {p.split(".")[-1] for p in self.program.disabled if p.rsplit(".", 1)[0] == ".".join(scope)} \
            if scope else {p for p in self.program.disabled if "." not in p}

    def _shapes(self, config, group: str) -> dict:
        out = {}
        for k in obs_keys(config, group):
            if k not in self.obs_key_shapes:
                raise ConfigError(f"observation key {k!r} (observation.modalities.{group}) is not in the dataset; "
                                  f"dataset keys: {sorted(self.obs_key_shapes)}{closest(k, self.obs_key_shapes)}")
            out[k] = self.obs_key_shapes[k]
        return out

    def _build_nets(self, config, scope, nets, shapes, where) -> None:
        p = self.program
        try:
            encoder = resolve_encoder_classes(encoder_spec(to_plain(config.observation)))
        except ValueError as e:
            raise ConfigError(f"{where('observation')}: {e}") from None
        for name, spec in config.nets.items():
            if spec is None:
                continue
            spec = to_plain(spec)
            if not spec.pop("enabled", True):
                p.disabled.add(_join(scope, name))
                continue
            spec_target = spec.pop("_target_")
            builder = resolve(spec_target)
            kwargs = dict(obs_shapes=shapes["obs"], ac_dim=self.ac_dim, goal_shapes=shapes["goal"], **spec)
            params = inspect.signature(builder).parameters
            if "subgoal_shapes" in params:
                kwargs.setdefault("subgoal_shapes", shapes["subgoal"] or None)
            if "encoder" in params and "encoder" not in kwargs:  # the observation encoder spec (modalities, cores)
                kwargs["encoder"] = encoder
            if self.task_dim:  # a multi-task run: every network takes the task (a critic blind to it would be wrong)
                if "task_dim" not in params:
                    self.task_blind.append(f"{_join(scope, name)} ({spec_target})")
                else:
                    kwargs.setdefault("task_dim", self.task_dim)
                    kwargs.setdefault("task_fuse", str(config.task.fuse))
                    self.task_nets.append(_join(scope, name))
            check_kwargs(builder, kwargs, where(f"nets.{name}"))
            try:
                nets[name] = builder(**kwargs).to(self.device)
            except ValueError as e:
                raise ConfigError(f"{where(f'nets.{name}')}: {e}") from None
        for name, spec in (config.get("targets") or {}).items():
            if spec is None:
                continue
            src = spec.source
            if _join(scope, src) in p.disabled:
                p.disabled.add(_join(scope, name))
                continue
            if src not in nets:
                raise ConfigError(f"{where(f'targets.{name}')}: source network {src!r} does not exist "
                                  f"(nets: {list(nets)})")
            nets[name] = copy.deepcopy(nets[src]).requires_grad_(False).eval()
            p.targets[_join(scope, name)] = (_join(scope, src), float(spec.get("tau", 0.005)))
            if spec.get("ema") is not None:  # an EMA of the weights with a step-dependent decay (Diffusion Policy)
                ema = to_plain(spec.ema)
                if not ema.pop("enabled", True):
                    ema["max_decay"] = 0.0  # EMA off: the target follows its source exactly
                check_kwargs(ema_decay, {"step": 0, **ema}, where(f"targets.{name}.ema"))
                p.ema[_join(scope, name)] = ema

    def _build_optimizers(self, config, scope) -> None:
        p = self.program
        fused = bool(config.train.get("fused_optimizer", False))
        if fused and config.train.get("compile", False):
            raise ConfigError("train.fused_optimizer=true and train.compile=true: choose one (compile already "
                              "compiles every optimizer step)")
        for name, op in to_plain(config.algo.get("optim_params") or {}).items():
            path = _join(scope, name)
            if path in p.targets or path in p.disabled:
                continue
            try:
                net = p.net(path)
            except AttributeError:
                continue
            opt = optimizer_from_params(net.parameters(), op, fused)
            p.optimizers[path] = opt
            p.schedulers[path] = scheduler_from_params(
                opt, op, op.get("num_epochs", config.train.num_epochs),
                op.get("num_train_batches", config.experiment.epoch_every_n_steps))
            p.per_batch[path] = bool(op["learning_rate"].get("step_every_batch", False)) or \
                op["learning_rate"].get("scheduler_type") == "cosine"

    def _bind_update(self, i, spec, scope, prefix, losses, where) -> None:
        p = self.program
        spec = to_plain(spec)
        name = spec.pop("name", f"update{i}")
        w = where(f"updates[{i}] ({name})")
        opts = spec.pop("optimizer", None)
        opts = [] if opts is None else [opts] if isinstance(opts, str) else list(opts)
        pre = [bind_call(f"{w}.prepare[{j}]", s, self.net_at(scope), self._disabled(scope))
               for j, s in enumerate(spec.pop("prepare", None) or [])]
        weights = dict(spec.pop("losses"))
        u = Update(name=name, losses=[], optimizers=[_join(scope, o) for o in opts], scope=scope, prefix=prefix,
                   every=int(spec.pop("every", 1) or 1), start_epoch=int(spec.pop("start_epoch", -1)),
                   end_epoch=int(spec.pop("end_epoch", -1)), start_step=int(spec.pop("start_step", -1)),
                   end_step=int(spec.pop("end_step", -1)), max_grad_norm=spec.pop("max_grad_norm", None),
                   clip_per_member=bool(spec.pop("clip_per_member", False)),
                   targets=[_join(scope, t) for t in (spec.pop("targets", None) or [])],
                   rows=str(spec.pop("rows", "all")))
        if u.rows not in ROWS:
            raise ConfigError(f"{w}: rows={u.rows!r}; it is one of {', '.join(ROWS)}")
        if spec:
            raise ConfigError(f"{w}: unknown keys {sorted(spec)}{closest(sorted(spec)[0], UPDATE_KEYS)}; an update "
                              f"has {', '.join(UPDATE_KEYS)}")
        if u.optimizers and u.optimizers[0] in p.disabled:
            return  # it steps a disabled network: the update does not exist
        for lname, weight in weights.items():
            if lname not in losses:
                raise ConfigError(f"{w}: uses loss {lname!r}, which the recipe does not define"
                                  f"{closest(lname, losses)} (losses: {list(losses)})")
            u.losses.append((lname, losses[lname], float(weight)))
        if u.rows != "all" and any(c.writes for _, c, _ in u.losses):
            raise ConfigError(f"{w}: rows={u.rows!r} with a loss that writes into the batch "
                              f"({[n for n, c, _ in u.losses if c.writes]}): it would write into a copy of some rows")
        for o in u.optimizers:
            if o not in p.optimizers:
                raise ConfigError(f"{w}: no optimizer for network {o.split('.')[-1]!r}; add "
                                  f"algo.optim_params.{o.split('.')[-1]}")
        u.targets = [t for t in u.targets if t not in p.disabled]
        for t in u.targets:
            if t not in p.targets:
                raise ConfigError(f"{w}: {t.split('.')[-1]!r} is not a target network "
                                  f"(targets: {[x.split('.')[-1] for x in p.targets]})")
        if pre:
            p.steps.append(Prepare(f"{w}.prepare", pre, scope))
        p.steps.append(u)

    def _build_hierarchical(self, config, scope, prefix) -> None:
        """Components built in order as namespaced programs (``scope + (name,)``, log prefix ``<prefix>Name/``);
        the recipe's ``updates`` list which component trains when, with optional no-grad ``prepare`` steps over
        the whole batch right before it (HBC cascade: the actor's subgoals from the planner just updated)."""
        from modmimic.config import component_config

        self.recipes[scope], self.configs[scope] = str(config.recipe_name), config
        p = self.program
        comps, fed, sub_programs = [], set(), {}
        for name, spec in config.components.items():
            if spec is None:
                continue
            sub_cfg = _with_component_variant(config, name, component_config(config, name))
            gs = None
            if spec.get("goal_shapes_from"):
                src = _join(scope, str(spec.goal_shapes_from))
                try:
                    gs = dict(p.net(src).actor_goal_shapes)
                except AttributeError:
                    raise ConfigError(f"components.{name}.goal_shapes_from: no network {spec.goal_shapes_from!r} "
                                      f"among the components built before {name!r} ({comps})") from None
                fed.add(name)
            pre = f"{prefix}{spec.get('log_prefix') or name}/"
            n_steps = len(p.steps)
            try:
                self.build(sub_cfg, scope + (name,), pre, gs)
            except ConfigError as e:
                raise ConfigError(f"component {name!r} ({sub_cfg.recipe_name}): {e}") from None
            sub_programs[name] = p.steps[n_steps:]
            del p.steps[n_steps:]
            p.components[_join(scope, name)] = pre
            comps.append(name)
        shapes = {"obs": {}, "goal": {}, "subgoal": {}}
        for name in comps:
            sh = self.shapes[scope + (name,)]
            shapes["obs"].update(sh["obs"])
            shapes["subgoal"].update(sh["subgoal"])
            if name not in fed:  # an environment goal (not a subgoal a planner feeds)
                shapes["goal"].update(sh["goal"])
        self.shapes[scope] = shapes
        for i, u in enumerate(config.updates):
            u = to_plain(u)
            name = u.pop("component")
            w = f"{'/'.join(scope) + '/' if scope else ''}updates[{i}] (component {name})"
            pre = [bind_call(f"{w}.prepare[{j}]", s, self.net_at(scope)) for j, s in enumerate(u.pop("prepare", None)
                                                                                                 or [])]
            if u:
                raise ConfigError(f"{w}: unknown keys {sorted(u)}; a hierarchical recipe's update names a component "
                                  "and an optional prepare list")
            if pre:
                p.steps.append(Prepare(f"{w}.prepare", pre, scope))
            p.steps.extend(sub_programs[name])


UPDATE_KEYS = ("name", "losses", "optimizer", "every", "start_epoch", "end_epoch", "start_step", "end_step",
               "max_grad_norm", "clip_per_member", "targets", "prepare", "rows")
ROWS = ("all", "offline", "online")  # which of a batch's rows an update trains on (modmimic.program.Update.rows)


def task_conditioning_dim(config: DictConfig, task_dim: int | None) -> int | None:
    """The task embedding size the networks take: ``task_dim`` when ``task.conditioning`` is set (then it is
    required), None otherwise (then ``task_dim`` must be None)."""
    cond = (config.get("task") or {}).get("conditioning")
    if cond in (None, "none", "None"):
        if task_dim:
            raise ConfigError(f"a task embedding of size {task_dim} was given but task.conditioning is null")
        return None
    if not task_dim or int(task_dim) < 1:
        raise ConfigError(f"task.conditioning={cond} needs the task embedding size (the run's task vocabulary): "
                          "train on data with tasks, or load a checkpoint that stores its task_vocab")
    return int(task_dim)


def compile_recipe(config: DictConfig, obs_key_shapes: dict, ac_dim: int, device="cpu", goal_shapes=None,
                   task_dim: int | None = None):
    """``(program, builder)``: ``config`` compiled into a :class:`Program`, its keys checked (see
    :func:`modmimic.program.check_keys`). ``task_dim``: the task embedding size of a multi-task run
    (``task.conditioning``), given to every network whose builder takes ``task_dim``."""
    b = Builder(config, obs_key_shapes, ac_dim, device, task_dim)
    b.build(config, (), "", goal_shapes)
    if b.task_dim and b.task_blind:
        raise ConfigError(f"task.conditioning={config.task.conditioning}: recipe {config.recipe_name!r} has networks "
                          f"without a task input (task_dim): {', '.join(b.task_blind)}; multi-task conditioning is "
                          "built into modmimic.components.nets.policy.policy (BC, BC-RNN, BC-Transformer and their "
                          "Gaussian/GMM variants)")
    check_keys(b.program, str(config.recipe_name))
    return b.program, b


VALUE_FNS = ("state", "state_action")


def _obs_tensor(v, device) -> torch.Tensor:
    """An observation as a tensor on ``device``: uint8 (images) kept as is, anything else float32."""
    t = torch.as_tensor(v)
    return t.to(device) if t.dtype == torch.uint8 else t.to(device=device, dtype=torch.float32)


ENCODER_CLASS_KEYS = ("core_class", "backbone_class", "obs_randomizer_class")


def resolve_encoder_classes(spec):
    """An encoder spec (:func:`encoder_spec`) whose core, backbone and randomizer classes given by dotted path
    (``mypkg.vit.ViTTrunk``) are resolved to the classes under the trust rules; robomimic's names
    (``VisualCore``, ``ResNet18Conv``, ``CropRandomizer``) stay names the networks look up."""
    def walk(node):
        if isinstance(node, dict):
            return {k: (resolve_names(v) if k in ENCODER_CLASS_KEYS else walk(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    def resolve_names(v):
        if isinstance(v, list):
            return [resolve_names(x) for x in v]
        return resolve(v) if isinstance(v, str) and "." in v else v

    return walk(spec) if spec else spec


def _resolve_nested(spec: dict, where: str) -> dict:
    """``spec`` with every ``fn`` dotted name in it (its own and its sub-components') resolved to the callable, under
    the trust rules: components receive callables, never names to import."""
    out = {}
    for k, v in spec.items():
        if k == "fn" and isinstance(v, str):
            v = resolve(v)
        elif isinstance(v, dict) and "fn" in v:
            v = _resolve_nested(v, f"{where}.{k}")
        out[k] = v
    return out


def _from_spec(spec, nets, where: str):
    """``fn(nets, **kwargs)`` of a recipe's inference spec ``{fn: <dotted path>, **kwargs}``; bad arguments are
    configuration errors naming ``where``."""
    spec = _resolve_nested(to_plain(spec), where)
    cls = spec.pop("fn")
    check_kwargs(cls, {"nets": None, **spec}, where)
    try:
        return cls(nets, **spec)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


class NetPaths:
    """Networks by path: ``nets["actor.policy"]`` is the ``policy`` network of the ``actor`` component (nested
    components: ``"value_planner.value.critic"``); a flat recipe's ``nets["policy"]``. Read-only."""

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


def _nest(flat: dict) -> dict:
    """``{"a.b": x}`` -> ``{"a": {"b": x}}`` (a hierarchical recipe's optimizers nested by component)."""
    out = {}
    for path, v in flat.items():
        *parents, last = path.split(".")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[last] = v
    return out


def _unnest(nested: dict, path: str):
    d = nested
    for p in path.split("."):
        d = d[p]
    return d


def autocast_of(config, device):
    """``train.amp``: None (full precision) or ``bf16`` (a factory of bfloat16 autocast contexts on ``device``)."""
    amp = config.train.get("amp")
    if amp in (None, "none", "None", False):
        return None
    if amp != "bf16":
        raise ConfigError(f"train.amp must be null or bf16, got {amp!r}")
    dev = torch.device(device).type
    return lambda: torch.autocast(dev, dtype=torch.bfloat16)


class Algo:
    """A recipe compiled into a :class:`~modmimic.program.Program`, with robomimic's ``Algo`` methods.

    ``train_on_batch`` is :func:`~modmimic.program.run_step` of the program; nothing algorithm-specific lives here.
    A hierarchical recipe (HBC, IRIS) is one program too; ``components[<name>]`` are views of its components (their
    networks, optimizers, shapes, acting path and value queries, robomimic's sub-algorithms), ``paths`` finds any
    network by path (``paths["actor.policy"]``)."""

    def __init__(self, config: DictConfig, obs_key_shapes: dict, ac_dim: int, device="cpu",
                 goal_shapes: dict | None = None, *, task_dim: int | None = None, _view=None):
        self._bind(config, obs_key_shapes, ac_dim, device)
        if _view is None:
            program, builder = compile_recipe(config, obs_key_shapes, ac_dim, device, goal_shapes, task_dim)
            scope = ()
        else:
            program, builder, scope = _view
        self.program, self.scope, self._builder = program, scope, builder
        self.task_dim = builder.task_dim  # the task embedding size of a multi-task policy (None: single task)
        self.nets = program.nets if not scope else program.net(".".join(scope))
        self.paths = NetPaths(self.nets)
        sh = builder.shapes[scope]
        self.obs_shapes, self.goal_shapes, self.subgoal_shapes = dict(sh["obs"]), dict(sh["goal"]), dict(sh["subgoal"])
        pre = "".join(f"{s}." for s in scope)
        self.optimizers = {p[len(pre):]: o for p, o in program.optimizers.items() if p.startswith(pre)}
        self.lr_schedulers = {p[len(pre):]: s for p, s in program.schedulers.items() if p.startswith(pre)}
        self.target_specs = {p[len(pre):]: (s[len(pre):], tau) for p, (s, tau) in program.targets.items()
                             if p.startswith(pre)}
        self.components, self.log_prefixes = OrderedDict(), {}
        own = program.components.get(".".join(scope), "")
        for path, prefix in program.components.items():
            parts = tuple(path.split("."))
            if parts[:-1] == scope:
                self.components[parts[-1]] = Algo(builder.configs[parts], obs_key_shapes, ac_dim, device,
                                                  _view=(program, builder, parts))
                self.log_prefixes[parts[-1]] = prefix[len(own):-1]
        self._build_inference(self.paths)
        self._step = 0
        self.check_finite = True
        self._fresh_batch = None
        self._batch_fns = None
        self._writes_batch = program.writes_batch
        if _view is None:
            program.autocast = autocast_of(config, self.device)
        if _view is None and config.train.get("compile", False):
            self.compile()

    # --- construction ---------------------------------------------------------------------------------------
    def _bind(self, config: DictConfig, obs_key_shapes: dict, ac_dim: int, device) -> None:
        """The attributes robomimic's ``Algo`` exposes."""
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

    @property
    def steps(self) -> list:
        """The program's steps that belong to this algorithm (all of them at the top)."""
        n = len(self.scope)
        return [s for s in self.program.steps if s.scope[:n] == self.scope]

    @property
    def losses(self) -> dict:
        """This algorithm's bound losses by name (a component's own, not its sub-components')."""
        return {lname: call for s in self.steps if isinstance(s, Update) and s.scope == self.scope
                for lname, call, _ in s.losses}

    @property
    def updates(self) -> list:
        return [s for s in self.steps if isinstance(s, Update) and s.scope == self.scope]

    # --- robomimic Algo API ----------------------------------------------------------------------------------
    def process_batch_for_training(self, batch):
        """Window batch (modmimic TensorDict or robomimic dict) -> the recipe's training batch on the device: the
        batch function's output, or for a hierarchical recipe one batch per component, ``batch[<name>]``."""
        if not isinstance(batch, TensorDict):
            batch = batch_from_robomimic(batch)
        if batch.device != self.device:
            batch = batch.to(self.device)
        fns = self._batch_fns
        if fns is None:
            n = len(self.scope)
            fns = self._batch_fns = [(s[n:], c) for s, c in self.program.batch if s[:n] == self.scope]
        if len(fns) == 1 and not fns[0][0]:
            out = fns[0][1](batch)
        else:
            out = TensorDict({}, batch_size=batch.batch_size[:1], device=self.device)
            for scope, call in fns:
                out.set(scope, call(batch))
        # a batch built here is this step's own: train_on_batch may write into it without copying it first
        self._fresh_batch = id(out) if out is not batch else None
        return out

    def postprocess_batch_for_training(self, batch, obs_normalization_stats=None):
        """robomimic's obs normalization hook. modmimic's sampler already serves normalized observations; pass stats
        only for batches that come from elsewhere (e.g. a raw robomimic DataLoader)."""
        return batch if obs_normalization_stats is None else normalize_obs(batch, obs_normalization_stats)

    def train_on_batch(self, batch, epoch: int, validate: bool = False) -> dict:
        """One training step (:func:`~modmimic.program.run_step`): the recipe's steps in order; with ``validate``
        losses only, nothing stepped. Returns the log values as tensors (no host sync; :meth:`log_info` reads
        them)."""
        if self.scope:
            raise RuntimeError(f"component {'.'.join(self.scope)!r} is trained by its hierarchical algorithm's "
                               "train_on_batch")
        with torch.set_grad_enabled(not validate):
            if self._writes_batch and id(batch) != self._fresh_batch:
                batch = batch.clone(False)
            self._fresh_batch = None
            try:
                info = run_step(self.program, batch, epoch, self._step, validate, self.check_finite)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(self._name_component(str(e))) from None
        if not validate:
            self._step += 1
        return info

    def _name_component(self, msg: str) -> str:
        for path, prefix in sorted(self.program.components.items(), key=lambda x: -len(x[1])):
            if f"loss '{prefix}" in msg:
                name = path.split(".")[-1]
                return f"component {name!r} ({self._builder.recipes[tuple(path.split('.'))]}): " + \
                    msg.replace(f"loss '{prefix}", "loss '")
        return msg

    def compile(self) -> None:
        """``train.compile``: every prepare and loss function, and every optimizer step, through ``torch.compile``
        (the backward of a compiled loss is compiled too). The first steps are slow while graphs compile."""
        backend = self.config.train.get("compile_backend", "inductor")
        kw = {}
        if self.config.train.get("cuda_graphs", False):  # CUDA graphs of the compiled steps (cudagraph trees)
            if self.device.type != "cuda":
                raise ConfigError(f"train.cuda_graphs=true needs device=cuda (got {self.device})")
            kw["mode"] = "reduce-overhead"
        for c in self.program.calls():
            if not getattr(c.fn, "_modmimic_compiled", False):
                c.fn = torch.compile(c.fn, backend=backend, **kw)
                c.fn._modmimic_compiled = True
        # every optimizer's step is the same code object guarded on the instance: allow one graph per optimizer
        import torch._dynamo as dynamo  # (binds only ``dynamo``: a bare ``import torch._dynamo`` shadows ``torch``)

        cfg = dynamo.config
        cfg.recompile_limit = max(cfg.recompile_limit, 8 * len(self.program.optimizers) + 8)
        self.program.opt_step.update({k: torch.compile(o.step, backend=backend, **kw)
                                      for k, o in self.program.optimizers.items()})

    @torch.no_grad()
    def soft_update(self, target: str) -> None:
        """Polyak: ``target <- (1 - tau) * target + tau * source``."""
        soft_update(self.program, ".".join((*self.scope, target)), self._step)

    def on_gradient_step(self) -> None:
        """Per-batch LR schedules step inside :meth:`train_on_batch` (part of the program's step)."""

    def on_epoch_end(self, epoch: int) -> None:
        for k, sch in self.lr_schedulers.items():
            if sch is not None and not self.program.per_batch.get(".".join((*self.scope, k))):
                sch.step()

    def learning_rates(self, prefix: str = "") -> dict:
        """``{"Optimizer/<prefix><net>0_lr": lr}`` (robomimic's names; a component's networks as
        ``Optimizer/Actor/policy0_lr``)."""
        out = {}
        for path, opt in self.optimizers.items():
            full = ".".join((*self.scope, path))
            comp, _, net = full.rpartition(".")
            pre = self.program.components.get(comp, "")
            if self.scope:
                pre = pre[len(self.program.components[".".join(self.scope)]):]
            out[f"Optimizer/{prefix}{pre}{net}0_lr"] = opt.param_groups[0]["lr"]
        return out

    def log_info(self, info: dict) -> dict:
        """The step's (or epoch-averaged) log values as floats, plus the learning rates: one host sync for all the
        tensors together."""
        keys = [k for k, v in info.items() if torch.is_tensor(v)]
        vals = torch.stack([info[k].detach().float().reshape(()) for k in keys]).tolist() if keys else []
        out = {k: (vals[keys.index(k)] if k in keys else float(v)) for k, v in info.items()}
        out.update(self.learning_rates())
        return out

    def set_train(self) -> None:
        self.nets.train()
        for t in self.target_specs:
            self.paths[t].eval()

    def set_eval(self) -> None:
        self.nets.eval()

    @property
    def check_finite(self) -> bool:
        return self._check_finite

    @check_finite.setter
    def check_finite(self, value: bool) -> None:
        self._check_finite = bool(value)

    def serialize(self) -> dict:
        """``nets``: one state dict (a hierarchical recipe's as ``<component>.<net>.*``); optimizers and LR schedulers
        by network (nested by component); the step counter."""
        return {"nets": self.nets.state_dict(),
                "optimizers": _nest({k: o.state_dict() for k, o in self.optimizers.items()}),
                "lr_schedulers": _nest({k: (s.state_dict() if s is not None else None)
                                        for k, s in self.lr_schedulers.items()}),
                "step": self._step}

    def deserialize(self, model_dict: dict, load_optimizers: bool = False) -> None:
        if "nets" not in model_dict:  # robomimic: a bare state_dict of the nets
            model_dict = {"nets": model_dict}
        self.program._polyak.clear()
        try:
            self.nets.load_state_dict(model_dict["nets"])
        except RuntimeError as e:
            raise ConfigError(f"checkpoint weights do not fit recipe {self.recipe_name!r}: {e}") from None
        if load_optimizers:
            for k, o in self.optimizers.items():
                o.load_state_dict(_unnest(model_dict["optimizers"], k))
            for k, s in self.lr_schedulers.items():
                sd = _unnest(model_dict["lr_schedulers"], k)
                if s is not None and sd is not None:
                    s.load_state_dict(sd)
            self._step = int(model_dict.get("step", 0))

    def _obs_td(self, obs_dict, goal_dict=None, task=None) -> TensorDict:
        if isinstance(obs_dict, TensorDict):
            td = obs_dict if K.OBS in obs_dict.keys() else TensorDict({K.OBS: obs_dict}, obs_dict.batch_size)
        else:
            obs = {k: _obs_tensor(v, self.device) for k, v in obs_dict.items()
                   if k in self.obs_shapes or k in self.goal_shapes}
            B = next(iter(obs.values())).shape[0]
            td = TensorDict({K.OBS: obs}, batch_size=[B], device=self.device)
        if goal_dict is not None:
            g = {k: _obs_tensor(v, self.device) for k, v in goal_dict.items() if k in self.goal_shapes}
            td[K.GOAL] = TensorDict(g, batch_size=td.batch_size, device=self.device)
        if task is not None:  # a multi-task policy: the task embedding of each row, [B, task_dim]
            td = td.to(self.device)
            td.set(K.TASK_EMB, torch.as_tensor(task, dtype=torch.float32, device=self.device)
                   .expand(*td.batch_size, -1))
        return td.to(self.device)

    def new_act_path(self):
        """A fresh acting path over this algorithm's networks (its own per-episode state), as ``act_path``."""
        return _from_spec(self.config.act, self.paths, "act")

    @torch.no_grad()
    def get_action(self, obs_dict, goal_dict=None, act_path=None, task=None) -> torch.Tensor:
        """Actions ``[B, A]`` for a batch of observations (dict of ``[B, ...]`` tensors or a TensorDict); ``act_path``:
        another acting path than the algorithm's own (:meth:`new_act_path`); ``task``: the task embedding ``[B, D]``
        (or ``[D]``, every row) of a multi-task policy."""
        if self.task_dim and task is None and not (isinstance(obs_dict, TensorDict) and K.TASK in obs_dict.keys()):
            raise ValueError(f"this policy is multi-task (task embeddings of size {self.task_dim}): pass task=")
        return (self.act_path if act_path is None else act_path)(self._obs_td(obs_dict, goal_dict, task))

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
        if self.components:
            parts = "\n".join(f"  {n} ({s.recipe_name}): {s!r}".replace("\n", "\n  ")
                              for n, s in self.components.items())
            return f"HierarchicalAlgo(recipe={self.recipe_name!r}, algo_name={self.algo_name!r})\n{parts}"
        return f"Algo(recipe={self.recipe_name!r}, algo_name={self.algo_name!r})\n{self.nets}"


class HierarchicalAlgo(Algo):
    """An :class:`Algo` whose recipe has components (HBC, IRIS): the same program engine; kept as a name for
    ``isinstance`` checks."""


def _component_overrides(config: DictConfig, name: str) -> dict:
    """The structure a hierarchical recipe file sets on component ``name`` (beyond naming its sub-recipe), resolved
    in ``config``: what a component keeps when its flags select another variant of its sub-recipe."""
    from modmimic.config import STRUCTURE_SECTIONS, find_recipe

    try:
        path = find_recipe(str(config.recipe_name))
    except ConfigError:
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


def algo_factory(algo_name: str, config: DictConfig, obs_key_shapes: dict, ac_dim: int, device="cpu",
                 task_dim: int | None = None) -> Algo:
    """robomimic's ``algo_factory``. The recipe is chosen by the algo name's factory function from the config's
    flags (e.g. ``bc`` with ``algo.rnn.enabled`` is ``bc_rnn``); if that differs from the recipe the config was
    composed from, the chosen recipe's structure is used with the config's values. Hierarchical recipes (with
    ``components``) build a :class:`HierarchicalAlgo`."""
    if algo_name != config.algo_name:
        raise ConfigError(f"algo_factory got algo name {algo_name!r} but the config is for {config.algo_name!r}")
    if algo_name in REGISTERED_ALGO_FACTORY_FUNCS:
        from modmimic.config import recipes_dir

        recipe = REGISTERED_ALGO_FACTORY_FUNCS[algo_name](config.algo)
        # robomimic's flags pick among the shipped variants; a user's own recipe keeps its structure
        if recipe != config.recipe_name and (recipes_dir() / f"{config.recipe_name}.yaml").is_file():
            from modmimic.config import with_recipe_structure

            config = with_recipe_structure(config, recipe)
    cls = HierarchicalAlgo if config.get("components") else Algo
    return cls(config, obs_key_shapes, ac_dim, device, task_dim=task_dim)
