"""A recipe compiled into one flat program, and :func:`run_step`, which executes a training step of any program.

A :class:`Program` is plain data:

* ``nets``: every network by path (``"critic"``; a hierarchical recipe's ``"actor.policy"``), in one
  ``nn.ModuleDict`` tree, plus ``targets`` (path -> (source path, tau)) that follow their source by polyak;
* ``optimizers`` / ``schedulers``: by the path of the network they step (robomimic ``algo.optim_params.<net>``);
* ``batch``: how sampled windows become the training batch (one function per component scope);
* ``steps``: the ordered list of what one training step does. A :class:`Prepare` step runs functions under no
  grad and writes what they return (their declared ``writes``) into the batch; an :class:`Update` sums its
  weighted losses, runs one backward, clips, steps its optimizers and then polyak-updates its targets. A step
  runs on its ``scope``: the whole batch, or a component's part of it (``batch["actor"]``).

A hierarchical recipe (HBC, IRIS) is its components' programs namespaced by component name and concatenated in
the recipe's order; there is no second engine. Every function a step calls declares the keys it reads and
writes (:func:`modmimic.keys.declare`), and :func:`check_keys` verifies, before anything runs, that each read is
produced by the data or an earlier step.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from modmimic import keys as K


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or Inf; names the term."""


# --- bound functions ---------------------------------------------------------------------------------------------

@dataclass
class Call:
    """A recipe function bound to its networks and hyperparameters: ``fn(batch, **nets, **kwargs, **context)``.

    ``where`` names it in the recipe (``"losses.critic"``, ``"actor/prepare[0]"``). ``nets`` maps argument names to
    modules (None for a disabled network). ``context``: the counters it declared (``"epoch"``, ``"step"``).
    ``reads`` / ``writes``: its declared batch keys with the recipe's arguments filled in."""
    where: str
    fn: object
    nets: dict
    kwargs: dict
    net_paths: dict = field(default_factory=dict)
    context: tuple = ()
    reads: list = field(default_factory=list)
    writes: list = field(default_factory=list)

    def __call__(self, batch, epoch: int = 0, step: int = 0):
        ctx = {}
        if self.context:
            ctx = {k: v for k, v in (("epoch", epoch), ("step", step)) if k in self.context}
        return self.fn(batch, **self.nets, **self.kwargs, **ctx)

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", str(self.fn))


@dataclass
class Prepare:
    """No-grad quantities for the steps after it, written into the batch (``scope``: the part it runs on)."""
    name: str
    calls: list
    scope: tuple = ()


@dataclass
class Update:
    """One optimizer step: ``sum_i weight_i * loss_i`` -> backward -> clip -> step every optimizer -> polyak. The
    losses are differentiated only with respect to the parameters the update steps (a critic inside an actor's loss
    passes gradients to the actions but computes none for itself).

    ``optimizers``: network paths (robomimic's per-network optimizers; several when one loss trains a network and,
    e.g., its learnable weight). ``max_grad_norm`` clips the first of them, each ensemble member separately with
    ``clip_per_member`` (robomimic steps every critic with its own optimizer). ``every = n``: the update runs on the
    n-th, 2n-th, ... step (robomimic's TD3 ``actor_update_counter % update_freq == 0`` after the increment);
    ``start_epoch`` / ``end_epoch`` (-1: unbounded) bound the epochs it runs in, ``start_step`` / ``end_step`` (-1:
    unbounded) the training steps (the global step counter, from 0): an update runs on step ``s`` when
    ``start_step <= s < end_step`` (VQ-BeT trains its VQ-VAE on steps ``[0, n)``, then its prior from ``n`` on).
    ``rows = "offline"``: its losses see only the batch's rows from the offline data (non-negative ``index``; online
    fine-tuning's rows have negative ones, :mod:`modmimic.online`), e.g. an actor fitted to the data while its critic
    learns from both; ``rows = "online"``: only the rows from the online replay buffer (e.g. an actor improved on its
    own transitions, away from the data's worse modes). Its losses may not write into the batch (they would write
    into the selected copy)."""
    name: str
    losses: list  # [(name, Call, weight)]
    optimizers: list
    scope: tuple = ()
    prefix: str = ""
    every: int = 1
    start_epoch: int = -1
    end_epoch: int = -1
    start_step: int = -1
    end_step: int = -1
    max_grad_norm: float | None = None
    clip_per_member: bool = False
    targets: list = field(default_factory=list)
    rows: str = "all"  # "all" | "offline" | "online"

    def active(self, epoch: int, step: int) -> bool:
        return ((self.start_epoch < 0 or epoch >= self.start_epoch)
                and (self.end_epoch < 0 or epoch < self.end_epoch)
                and (self.start_step < 0 or step >= self.start_step)
                and (self.end_step < 0 or step < self.end_step) and (step + 1) % self.every == 0)


@dataclass
class Program:
    """A compiled recipe (see the module docstring)."""
    recipe: str
    nets: nn.ModuleDict
    optimizers: dict = field(default_factory=dict)
    schedulers: dict = field(default_factory=dict)  # path -> LR scheduler or None
    per_batch: dict = field(default_factory=dict)  # path -> True when its scheduler steps every batch
    targets: dict = field(default_factory=dict)  # path -> (source path, tau)
    ema: dict = field(default_factory=dict)  # path -> EMA schedule kwargs of ema_decay (tau = 1 - decay(step))
    batch: list = field(default_factory=list)  # [(scope, Call)]
    steps: list = field(default_factory=list)
    components: dict = field(default_factory=dict)  # scope path ("actor", "value_planner.value") -> log prefix
    disabled: set = field(default_factory=set)
    data_keys: list = field(default_factory=list)
    opt_step: dict = field(default_factory=dict)  # compiled optimizer steps (train.compile)
    grad_sync: object = None  # grad_sync(program, update) after each backward (data-parallel: modmimic.distributed)
    autocast: object = None  # context factory around prepare and loss calls (train.amp=bf16); backward outside it
    _polyak: dict = field(default_factory=dict)
    _frozen: dict = field(default_factory=dict)  # id(update) -> parameters its losses reach but it does not step

    def net(self, path: str) -> nn.Module:
        return self.nets.get_submodule(str(path))

    @property
    def writes_batch(self) -> bool:
        """Whether a training step writes into the batch (so a batch it did not build must be copied first)."""
        return any(isinstance(s, Prepare) and s.calls for s in self.steps) or \
            any(c.writes for s in self.steps if isinstance(s, Update) for _, c, _ in s.losses)

    def calls(self):
        """Every bound function of the steps, in order."""
        for s in self.steps:
            if isinstance(s, Prepare):
                yield from s.calls
            else:
                yield from (c for _, c, _ in s.losses)


# --- running a step ------------------------------------------------------------------------------------------------

def _declared(key, writes) -> bool:
    """``key`` is one of ``writes`` or inside one of them (a declared group: ``("actor", "subgoal")``)."""
    if key in writes:
        return True
    t = key if isinstance(key, tuple) else (key,)
    return any(isinstance(w, tuple) and t[:len(w)] == w for w in writes)


def _write(part, call: Call, out: dict) -> None:
    for k, v in out.items():
        key = K.as_key(k)
        if not _declared(key, call.writes):
            raise KeyError(f"{call.where} ({call.name}) returned {key!r}, which it does not declare among its writes "
                           f"{call.writes}: declare it with modmimic.keys.declare(writes=...)")
        part.set(key, v)


def run_step(program: Program, batch, epoch: int, step: int, validate: bool = False,
             check_finite: bool = True) -> dict:
    """One training step of ``program`` on ``batch`` (which it may write into: pass a batch of this step's own).

    Runs the steps in order; an update's losses are summed with their weights, and unless ``validate`` the sum is
    back-propagated, clipped and stepped. Returns the log values as tensors, unsynchronised: ``"<prefix><loss>/<term>"``
    for every loss term, ``"<prefix><update>/grad_norm"`` when clipping, ``"<prefix>Loss"`` per component and
    ``"Loss"`` for the whole step. ``check_finite``: before an update steps anything, a NaN/Inf among its loss terms
    raises :class:`NonFiniteLossError` naming the term (one host sync per update; logging never syncs)."""
    info, totals = {}, {}
    for s in program.steps:
        part = batch.get(s.scope) if s.scope else batch
        if isinstance(s, Prepare):
            with torch.no_grad(), _autocast(program):
                for c in s.calls:
                    _write(part, c, c(part, epoch, step))
            continue
        if not s.active(epoch, step):
            continue
        if s.rows != "all":
            part = source_rows(part, s.rows)
        frozen = () if validate else _frozen(program, s)
        for p in frozen:
            p.requires_grad_(False)
        try:
            loss, terms = _losses(program, s, part, epoch, step, info)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        if check_finite and not math.isfinite(loss.item()):  # one host read per update
            _check_finite(s, terms, epoch, step)
        # the detached sum, or a lone unweighted term's value (detached once already, in info)
        d = loss.detach() if len(terms) > 1 or s.losses[0][2] != 1.0 else info[f"{s.prefix}{s.losses[0][0]}/loss"]
        totals[s.prefix] = d if s.prefix not in totals else totals[s.prefix] + d
        if not validate and s.optimizers:
            _backward_and_step(program, s, loss, info, step)
    if totals:
        total, nested = None, {}
        for prefix, t in totals.items():
            parts = prefix.split("/")[:-1]  # "Planner/Value/" -> every enclosing component's sum too
            for i in range(1, len(parts) + 1):
                p = "/".join(parts[:i]) + "/"
                nested[p] = t if p not in nested else nested[p] + t
            total = t if total is None else total + t
        for p, t in nested.items():
            info[f"{p}Loss"] = t
        info["Loss"] = total
    if not validate:
        for path, sch in program.schedulers.items():
            if sch is not None and program.per_batch.get(path):
                sch.step()
    return info


def source_rows(part, source: str):
    """The rows of ``part`` drawn from ``source``: ``"offline"``, the data (a non-negative ``index``, ``[B]`` or
    ``[B, T]``, whose first step counts), or ``"online"``, the replay buffer (``index = -1 - <buffer row>``).
    ``part`` itself when every row is from ``source``."""
    idx = part.get(K.INDEX, None)
    if idx is None:
        raise KeyError(f"an update with rows: {source} needs the batch's 'index' (where each row was sampled), which "
                       "this batch does not carry")
    offline = idx.reshape(idx.shape[0], -1)[:, 0] >= 0
    keep = offline if source == "offline" else ~offline
    return part if bool(keep.all()) else part[keep]


def _losses(program: Program, u: Update, part, epoch: int, step: int, info: dict):
    """Update ``u``'s weighted sum of losses and its terms in order; every term and metric goes into ``info``."""
    loss, terms = None, []
    for lname, call, weight in u.losses:
        with _autocast(program):
            out = call(part, epoch, step)
        term = out.pop("loss")
        if call.writes:
            _write(part, call, {k: out.pop(k) for k in list(out) if K.as_key(k) in call.writes})
        terms.append(term)
        weighted = term if weight == 1.0 else weight * term
        loss = weighted if loss is None else loss + weighted
        info[f"{u.prefix}{lname}/loss"] = term.detach()
        for k, v in out.items():  # metrics come detached (the loss contract)
            info[f"{u.prefix}{lname}/{k}"] = v.detach() if torch.is_tensor(v) and v.requires_grad else v
    return loss, terms


def _frozen(program: Program, u: Update) -> list:
    """The trainable parameters that update ``u``'s losses reach but ``u`` does not step (a critic inside an actor's
    loss). Their gradients would be cleared unread by the update that steps them (every update clears its own
    first), so ``u`` builds its graph without them: the same updates, without the wasted gradient."""
    params = program._frozen.get(id(u))
    if params is None:
        stepped = {id(p) for o in u.optimizers for g in program.optimizers[o].param_groups for p in g["params"]}
        params = {id(p): p for _, call, _ in u.losses for net in call.nets.values() if isinstance(net, nn.Module)
                  for p in net.parameters() if p.requires_grad and id(p) not in stepped}
        params = program._frozen[id(u)] = list(params.values())
    return params


def _autocast(program: Program):
    return _NO_AUTOCAST if program.autocast is None else program.autocast()


_NO_AUTOCAST = contextlib.nullcontext()  # stateless, so one instance serves every step


def _check_finite(u: Update, terms: list, epoch, step) -> None:
    """Update ``u``'s weighted sum of ``terms`` (its losses' values, in order) is not finite: name the first
    non-finite term (or the sum, when it overflowed)."""
    names = [f"{u.prefix}{lname}" for lname, _, _ in u.losses]
    for name, t in zip(names, terms):
        if not bool(torch.isfinite(t)):
            raise NonFiniteLossError(f"loss {name!r} (update {u.name!r}) is {t.item()} at epoch {epoch}, step {step}")
    raise NonFiniteLossError(f"the weighted sum of losses {', '.join(repr(n) for n in names)} (update {u.name!r}) "
                             f"overflowed at epoch {epoch}, step {step}")


def _backward_and_step(program: Program, u: Update, loss, info: dict, step: int = 0) -> None:
    opts = [program.optimizers[o] for o in u.optimizers]
    for opt in opts:  # zero_grad(set_to_none=True) without its per-call profiler scope
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = None
    loss.backward()
    if program.grad_sync is not None:  # average the gradients over the ranks before clipping and stepping
        program.grad_sync(program, u)
    if u.max_grad_norm is not None:
        net = program.net(u.optimizers[0])
        if u.clip_per_member and hasattr(net, "clip_grad_norm_per_member_"):
            norms = net.clip_grad_norm_per_member_(u.max_grad_norm)
            for i in range(norms.shape[0]):
                info[f"{u.prefix}{u.name}/grad_norm{i + 1 if norms.shape[0] > 1 else ''}"] = norms[i]
        else:
            groups = list(net.members) if u.clip_per_member and hasattr(net, "members") else [net]
            for i, g in enumerate(groups):
                suffix = str(i + 1) if len(groups) > 1 else ""
                info[f"{u.prefix}{u.name}/grad_norm{suffix}"] = torch.nn.utils.clip_grad_norm_(g.parameters(),
                                                                                               u.max_grad_norm)
    for path, opt in zip(u.optimizers, opts):
        program.opt_step.get(path, opt.step)()
    for t in u.targets:
        soft_update(program, t, step)


def ema_decay(step: int, power: float = 0.75, inv_gamma: float = 1.0, min_decay: float = 0.0,
              max_decay: float = 0.9999, update_after_step: int = 0) -> float:
    """The decay of an EMA target at its update after ``step`` earlier ones (the training step counter):
    ``k = max(0, step - update_after_step - 1)``; 0 when ``k == 0`` (the first two updates copy the weights), else
    ``clamp(1 - (1 + k / inv_gamma) ** -power, min_decay, max_decay)``. This is diffusers' ``EMAModel`` of the
    version robomimic pins (0.11.1, defaults inv_gamma 1, min 0, max 0.9999) and Diffusion Policy's own."""
    k = max(0, int(step) - int(update_after_step) - 1)
    if k <= 0:
        return 0.0
    return max(min_decay, min(1.0 - (1.0 + k / inv_gamma) ** -power, max_decay))


@torch.no_grad()
def soft_update(program: Program, target: str, step: int | None = None) -> None:
    """Polyak: ``target <- (1 - tau) * target + tau * source`` (buffers copied). An EMA target
    (``program.ema``) uses ``tau = 1 - ema_decay(step, ...)`` at training step ``step``."""
    pairs = program._polyak.get(target)
    if pairs is None:  # listing a module's parameters costs more than the lerp of small nets: list them once
        src, tau = program.targets[target]
        t, s = program.net(target), program.net(src)
        pairs = program._polyak[target] = (list(t.parameters()), list(s.parameters()), tau,
                                           list(zip(t.buffers(), s.buffers())))
    tp, sp, tau, bufs = pairs
    if target in program.ema:
        if step is None:
            raise ValueError(f"EMA target {target!r}: its decay depends on the training step; pass step")
        tau = 1.0 - ema_decay(step, **program.ema[target])
    torch._foreach_lerp_(tp, sp, tau)
    for tb, sb in bufs:
        tb.copy_(sb)


# --- build-time key check --------------------------------------------------------------------------------------------

def _covers(available: set, key) -> bool:
    """``key`` is available when it, one of its prefixes (a group) or a key below it is."""
    key = key if isinstance(key, tuple) else (key,)
    for a in available:
        a = a if isinstance(a, tuple) else (a,)
        n = min(len(a), len(key))
        if a[:n] == key[:n]:
            return True
    return False


def _fmt(key) -> str:
    return ".".join(key) if isinstance(key, tuple) else str(key)


GROUPS = (K.OBS, K.NEXT, K.GOAL, K.SUBGOAL)  # read by networks, so never reported as unread


def check_keys(program: Program, where: str) -> list[str]:
    """Every declared read must be produced by the data (``program.data_keys``) or an earlier step of the same
    scope: otherwise a :class:`~modmimic.config.ConfigError` naming the recipe, the step, the key and the steps that
    could produce it. Returns warnings for keys a step produces that no later step reads (also emitted)."""
    from modmimic.config import ConfigError

    data = set(K.as_key(k) for k in program.data_keys)
    avail = {(): set(data)}
    for scope, call in program.batch:
        _require(call, data, program, where, ConfigError, "the sampled windows")
        avail[scope] = data | set(call.writes)
        if scope:
            avail.setdefault((), set()).add(scope if len(scope) > 1 else scope[0])
            for i in range(1, len(scope)):
                avail.setdefault(scope[:i], set()).add(scope[i] if len(scope) > i + 1 else scope[i])
    produced = []  # (scope, key, where)
    for s in program.steps:
        scope_avail = avail.setdefault(s.scope, set(data))
        calls = s.calls if isinstance(s, Prepare) else [c for _, c, _ in s.losses]
        for c in calls:
            _require(c, scope_avail, program, where, ConfigError, f"the batch of scope {_fmt(s.scope) or 'root'}")
            for w in c.writes:
                scope_avail.add(w)
                produced.append((s.scope, w, c.where))
                if len(w) > 1 and isinstance(w, tuple) and not s.scope:  # a write into a component's batch
                    avail.setdefault((w[0],), set()).add(w[1:] if len(w) > 2 else w[1])
    reads = [(s.scope, r) for s in program.steps
             for c in (s.calls if isinstance(s, Prepare) else [c for _, c, _ in s.losses]) for r in c.reads]
    out = []
    for scope, key, who in produced:
        top = key[0] if isinstance(key, tuple) else key
        if top in GROUPS or isinstance(key, tuple):
            continue
        if not any(sc == scope and (r == key or (isinstance(r, tuple) and r[0] == key)) for sc, r in reads):
            msg = f"recipe {where!r}: {who} produces {_fmt(key)!r}, which no later step reads"
            out.append(msg)
            warnings.warn(msg, stacklevel=3)
    return out


def _require(call: Call, avail: set, program: Program, where: str, error, what: str) -> None:
    for r in call.reads:
        if _covers(avail, r):
            continue
        makers = sorted({c.where for c in program.calls() if r in c.writes})
        hint = (f"; it is produced by {', '.join(makers)}, which must run before it (add it to prepare or to an "
                "earlier update)") if makers else \
            "; no step of the recipe produces it (add a prepare step whose function declares it in its writes)"
        raise error(f"recipe {where!r}: {call.where} ({call.name}) reads {_fmt(r)!r}, which is not in "
                    f"{what} at that point{hint}")
