"""Acting paths: how a recipe turns the current observation into an action at test time.

An acting path holds per-environment state for a batch of ``B`` environments. ``reset(B)`` starts every
environment afresh, ``reset(B, done)`` only those where the bool mask ``done`` is True (parallel evaluation).
``__call__(td)`` takes a ``[B]`` TensorDict of the current observation (and goal) and returns ``[B, A]`` actions.
Networks are looked up in the algorithm's ``nets`` by name at call time.

Value queries (a recipe's ``value_fns``) are stateless: ``__call__(td) -> [B, 1]`` values of states, or
``__call__(td, actions)`` of state-action pairs.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict

from modmimic import keys as K


class Direct:
    """The network's evaluation action (``net.act``): BC, BC-Gaussian/GMM/VAE, CQL, IQL, TD3-BC actors."""

    def __init__(self, nets, net: str = "policy"):
        self.nets, self.net = nets, net

    def reset(self, batch_size: int, done: torch.Tensor | None = None) -> None:
        pass

    def __call__(self, td: TensorDict) -> torch.Tensor:
        return self.nets[self.net].act(td)

    def state_dict(self) -> dict:
        return {}


class Recurrent:
    """Step-wise RNN inference: hidden state carried between calls and re-initialised to zeros every ``horizon``
    steps of each environment (robomimic BC-RNN ``get_action``). ``open_loop`` feeds the observation seen at the
    last re-initialisation instead of the current one."""

    def __init__(self, nets, net: str = "policy", horizon: int = 10, open_loop: bool = False):
        self.nets, self.net, self.horizon, self.open_loop = nets, net, int(horizon), open_loop
        self.state, self.counter, self.held = None, None, None

    def reset(self, batch_size: int, done: torch.Tensor | None = None) -> None:
        if done is None or self.counter is None or len(self.counter) != batch_size:
            self.state, self.counter, self.held = None, torch.zeros(batch_size, dtype=torch.long), None
        else:
            self.counter[done.cpu()] = 0

    def __call__(self, td: TensorDict) -> torch.Tensor:
        net = self.nets[self.net]
        B = td.batch_size[0]
        if self.counter is None or len(self.counter) != B:
            self.reset(B)
        fresh = (self.counter % self.horizon) == 0
        if self.state is None:
            self.state = net.initial_state(B, td.device)
        if fresh.any():
            init = net.initial_state(B, td.device)
            rows = fresh.to(td.device)
            if isinstance(self.state, tuple):
                self.state = tuple(torch.where(rows[None, :, None], i, s) for i, s in zip(init, self.state))
            else:
                self.state = torch.where(rows[None, :, None], init, self.state)
            if self.open_loop:
                self.held = td.clone() if self.held is None else torch.where(rows, td, self.held)
        inp = self.held if self.open_loop else td
        action, self.state = net.forward_step(inp, self.state)
        self.counter += 1
        return action


class Chunked:
    """Action-chunk execution, the one acting path of every chunking policy (Diffusion Policy, ACT, BC-Transformer
    with ``pred_future_acs``).

    ``Chunked(nets, net: str, action_horizon: int, obs_horizon: int = 1, start: int = 0,
    temporal_ensemble: bool = False, ensemble_k: float = 0.01, net_args: dict | None = None)``

    * The network ``nets[net]`` exposes ``predict_chunk(td) -> [B, Tp, A]``: ``td`` is a ``[B, obs_horizon]``
      TensorDict of the last ``obs_horizon`` observations of each environment, oldest first (a ``[B]`` TensorDict of
      the current observation when ``obs_horizon == 1``), with the same keys as the acting batch (observation and
      goal groups). It is called under ``torch.no_grad`` (``get_action``) on the rows that re-plan, in env order.
      ``net_args`` ``{argument: net}`` passes other networks as keyword arguments (VQ-BeT's prior decodes its codes
      with ``vqvae``: ``predict_chunk(td, vqvae=nets["vqvae"])``).
    * Observation history: per environment, the last ``obs_horizon`` observations; at an episode start the first
      observation fills all of them (robomimic's ``FrameStackWrapper``).
    * Execution: chunk index ``start`` is the current step (Diffusion Policy: ``To - 1``; ACT: 0). The actions
      ``chunk[:, start : start + action_horizon]`` are executed one per step, then the environment re-plans on its
      next step. ``Tp >= start + action_horizon`` is required.
    * Temporal ensembling (ACT), ``temporal_ensemble=True``: every environment re-plans every step; the chunk
      predicted ``j`` steps ago proposes its action ``start + j`` for the current step (``j < action_horizon``);
      the action is the weighted mean of the proposals of every chunk predicted since the episode started, with
      weights ``exp(-ensemble_k * i)`` normalised, ``i = 0`` the oldest proposal.
    * ``reset(B)`` starts every environment afresh; ``reset(B, done)`` only those where the bool mask ``done`` is
      True: their history, queued actions and ensemble are dropped; the other environments continue unchanged.
    """

    def __init__(self, nets, net: str, action_horizon: int, obs_horizon: int = 1, start: int = 0,
                 temporal_ensemble: bool = False, ensemble_k: float = 0.01, net_args: dict | None = None):
        if action_horizon < 1 or obs_horizon < 1 or start < 0:
            raise ValueError(f"chunked acting needs action_horizon >= 1, obs_horizon >= 1 and start >= 0, got "
                             f"{action_horizon}, {obs_horizon}, {start}")
        self.nets, self.net, self.net_args = nets, net, dict(net_args or {})
        self.Ta, self.To, self.start = int(action_horizon), int(obs_horizon), int(start)
        self.temporal_ensemble, self.ensemble_k = bool(temporal_ensemble), float(ensemble_k)
        self.ctx = self.fresh = None
        self.plan = self.cursor = None  # [B, Ta, A] queued actions, [B] next index (Ta: exhausted)
        self.props = self.valid = None  # ensemble: [B, Ta, A] proposals by age j, [B, Ta] which exist

    def reset(self, batch_size: int, done: torch.Tensor | None = None) -> None:
        if done is None or self.fresh is None or len(self.fresh) != batch_size:
            self.ctx = self.plan = self.cursor = self.props = self.valid = None
            self.fresh = torch.ones(batch_size, dtype=torch.bool)
        else:
            self.fresh = self.fresh | done.cpu()

    def state_dict(self) -> dict:
        return {}

    def _history(self, td: TensorDict) -> TensorDict:
        """Push the current observation into each environment's history; the ``[B, To]`` window (``[B]``: To=1)."""
        if self.To == 1:
            return td
        B = td.batch_size[0]
        step = td.unsqueeze(1)
        filled = step.expand(B, self.To)
        if self.ctx is None:
            self.ctx = filled.clone()
        else:
            fresh = self.fresh.to(td.device)[:, None].expand(B, self.To)
            self.ctx = torch.where(fresh, filled, torch.cat([self.ctx[:, 1:], step], dim=1))
        return self.ctx

    def predict(self, window: TensorDict, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """The whole predicted chunk from the current step on, ``[B, Tp - start, A]``, for a window as
        ``predict_chunk`` takes it; no episode state is read or changed (asynchronous execution queues and merges
        chunks itself: :mod:`modmimic.chunking`). ``prefix`` ``[B, P, A]``: the actions of the first ``P`` steps
        are already decided; a network that samples its chunk (Diffusion Policy, flow policy) inpaints them."""
        net = self.nets[self.net]
        extra = {a: self.nets[n] for a, n in self.net_args.items()}
        if prefix is None:
            chunk = net.predict_chunk(window, **extra)
        elif getattr(net, "schedule", None) is None:
            raise ValueError(f"{self.net} ({type(net).__name__}) does not sample its chunks from noise: it cannot "
                             "inpaint decided actions")
        else:
            chunk = net.predict_chunk(window, prefix=prefix, prefix_at=self.start, **extra)
        if chunk.dim() != 3 or chunk.shape[1] < self.start + self.Ta:
            raise ValueError(f"{self.net}.predict_chunk returned shape {tuple(chunk.shape)}: chunked acting needs "
                             f"[B, Tp, A] with Tp >= start + action_horizon = {self.start + self.Ta}")
        return chunk[:, self.start:]

    def _chunk(self, window: TensorDict) -> torch.Tensor:
        return self.predict(window)[:, :self.Ta]

    def __call__(self, td: TensorDict) -> torch.Tensor:
        B = td.batch_size[0]
        if self.fresh is None or len(self.fresh) != B:
            self.reset(B)
        window = self._history(td)
        fresh = self.fresh
        self.fresh = torch.zeros(B, dtype=torch.bool)
        if self.temporal_ensemble:
            return self._ensemble(self._chunk(window), fresh)
        if self.plan is None:
            self.cursor = torch.full((B,), self.Ta, dtype=torch.long)
        self.cursor[fresh] = self.Ta
        due = self.cursor >= self.Ta
        if bool(due.all()):
            self.plan = self._chunk(window)
        elif bool(due.any()):
            rows = due.nonzero().squeeze(1)
            self.plan[rows.to(self.plan.device)] = self._chunk(window[rows.to(td.device)])
        self.cursor[due] = 0
        action = self.plan[torch.arange(B, device=self.plan.device), self.cursor.to(self.plan.device)]
        self.cursor += 1
        return action

    def _ensemble(self, chunk: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        """``chunk`` ``[B, Ta, A]`` predicted now; the proposal of the chunk of age ``j`` is its action ``j``."""
        B, Ta, _ = chunk.shape
        dev = chunk.device
        if self.props is None:
            self.props = chunk.new_zeros(B, Ta, Ta, chunk.shape[-1])
            self.valid = torch.zeros(B, Ta, dtype=torch.bool, device=dev)
        keep = ~fresh.to(dev)[:, None]
        self.props = torch.cat([chunk[:, None], self.props[:, :-1]], dim=1)  # [B, age j, offset, A]
        self.valid = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=dev), self.valid[:, :-1] & keep], dim=1)
        ages = torch.arange(Ta, device=dev)
        proposals = self.props[:, ages, ages]  # [B, Ta, A]: age j proposes its action j
        # exp(-k * i) with i = 0 the oldest of the n proposals is exp(-k * (n - 1 - j)), proportional to exp(k * j)
        w = torch.exp(self.ensemble_k * (ages - (Ta - 1)).to(chunk.dtype)) * self.valid
        w = w / w.sum(dim=1, keepdim=True)
        return (w[..., None] * proposals).sum(dim=1)


class Context(Chunked):
    """BC-Transformer acting (robomimic ``BC_Transformer.get_action``): a rolling context of the last
    ``context_length`` observations per environment (filled with the first observation at a reset, robomimic's
    ``FrameStackWrapper``). The network's output over the context ``[B, T, A]`` is its chunk
    (``net.predict_chunk``, :meth:`~modmimic.components.nets.policy.Policy.predict_chunk`): robomimic acts with the
    last step, or with the first with ``pred_future_acs`` (the current step's action; the later steps are the
    future actions, executed when ``action_horizon > 1`` or ensembled). A :class:`Chunked` path with
    ``obs_horizon = context_length`` and ``start = 0 if pred_future_acs else context_length - 1``."""

    def __init__(self, nets, net: str = "policy", context_length: int = 10, pred_future_acs: bool = False,
                 action_horizon: int = 1, temporal_ensemble: bool = False, ensemble_k: float = 0.01):
        if action_horizon > 1 and not pred_future_acs:
            raise ValueError("act.action_horizon > 1 executes future actions: it needs "
                             "algo.transformer.pred_future_acs=true (and supervise_all_steps)")
        super().__init__(nets, net, action_horizon, obs_horizon=context_length,
                         start=0 if pred_future_acs else context_length - 1,
                         temporal_ensemble=temporal_ensemble, ensemble_k=ensemble_k)
        self.K, self.pred_future_acs = int(context_length), pred_future_acs


class SampleSelect:
    """BCQ: draw ``num_samples`` candidate actions per state from the behaviour model, perturb them with the actor
    (when the recipe has one), and take the argmax of the first critic (robomimic BCQ ``get_action``)."""

    def __init__(self, nets, sampler: str = "action_sampler", critic: str = "critic", actor: str | None = None,
                 num_samples: int = 100):
        self.nets, self.sampler, self.critic, self.actor = nets, sampler, critic, actor
        self.num_samples = int(num_samples)

    def reset(self, batch_size: int, done: torch.Tensor | None = None) -> None:
        pass

    def __call__(self, td: TensorDict) -> torch.Tensor:
        from modmimic.components.losses.bcq import best_of

        actor = self.nets[self.actor] if self.actor is not None and self.actor in self.nets else None
        return best_of(self.nets[self.sampler], self.nets[self.critic], td, self.num_samples, actor)[0]

    def state_dict(self) -> dict:
        return {}


# --- value queries (recipes' value_fns: robomimic ValueAlgo; IRIS's subgoal scores) ------------------------------

class BestActionValue:
    """robomimic BCQ ``get_state_value``, IRIS's subgoal score: ``V(s) = max_j Q_1(s, a_j)`` over ``num_samples``
    actions from the behaviour model (perturbed by ``actor`` when given). ``__call__(td) -> [B, 1]``."""

    def __init__(self, nets, sampler: str = "action_sampler", critic: str = "critic", actor: str | None = None,
                 num_samples: int = 100):
        self.nets, self.sampler, self.critic, self.actor = nets, sampler, critic, actor
        self.num_samples = int(num_samples)

    def __call__(self, td: TensorDict) -> torch.Tensor:
        from modmimic.components.losses.bcq import best_of

        actor = self.nets[self.actor] if self.actor is not None and self.actor in self.nets else None
        return best_of(self.nets[self.sampler], self.nets[self.critic], td, self.num_samples, actor)[1]


class NetValue:
    """``V(s)`` of a state-value network (robomimic IQL ``get_state_value``: the ``vf`` network). ``__call__(td)
    -> [B, 1]``."""

    def __init__(self, nets, net: str = "vf"):
        self.nets, self.net = nets, net

    def __call__(self, td: TensorDict) -> torch.Tensor:
        return self.nets[self.net](td)


class CriticValue:
    """The first critic's ``Q_1(s, a)`` (robomimic scores with ``critic[0]``). ``__call__(td, actions) -> [B, 1]``;
    without actions, the ``actor``'s evaluation action is scored (robomimic CQL/TD3-BC ``get_state_value``)."""

    def __init__(self, nets, critic: str = "critic", actor: str | None = None):
        self.nets, self.critic, self.actor = nets, critic, actor

    def __call__(self, td: TensorDict, actions: torch.Tensor | None = None) -> torch.Tensor:
        if actions is None:
            if self.actor is None:
                raise ValueError("CriticValue without an actor needs the actions to score")
            actions = self.nets[self.actor].act(td)
        return self.nets[self.critic].q1(td, actions)


# --- hierarchical acting: planners and the subgoal-conditioned actor ------------------------------------------

class NotActable:
    """The acting path of a recipe that cannot be rolled out alone (robomimic GL: a subgoal planner has no
    actions). Resetting is allowed; asking for an action raises."""

    def __init__(self, nets, reason: str = "this recipe cannot be rolled out alone"):
        self.nets, self.reason = nets, str(reason)

    def reset(self, batch_size: int, done: torch.Tensor | None = None) -> None:
        pass

    def __call__(self, td: TensorDict) -> torch.Tensor:
        raise RuntimeError(f"no actions: {self.reason}")

    def state_dict(self) -> dict:
        return {}


def _component(nets, spec, what: str):
    """A sub-component of an acting path: an object used as is, a network name (looked up in ``nets`` at call
    time), or ``{fn: Class, **kwargs}`` built as ``Class(nets, **kwargs)``. The application resolves a recipe's
    dotted ``fn`` names (under its trust rules) before an acting path sees them."""
    if isinstance(spec, dict) or hasattr(spec, "items"):
        spec = dict(spec)
        cls = spec.pop("fn", None)
        if cls is None:
            raise ValueError(f"act.{what}: a component spec needs 'fn' (the class), got keys {sorted(spec)}")
        if not callable(cls):
            raise ValueError(f"act.{what}: 'fn' must be a class or function resolved by the caller, got {cls!r}")
        return cls(nets, **spec)
    return spec


def _net_or_object(nets, ref):
    return nets[ref] if isinstance(ref, str) else ref


class ValuePlanner:
    """robomimic ``ValuePlanner.get_subgoal_predictions``: sample ``num_samples`` subgoals per environment from
    ``planner`` (``sample_subgoals(td, n) -> [B, n]`` TensorDict of ``("subgoal", k)``), score every candidate with
    ``value`` and keep the best.

    ``value(td) -> [B * n]`` (or ``[B * n, 1]``) is any callable net that reads the candidate subgoals as
    observations ``("observation", k)`` (plus the environments' ``goal`` group, repeated, when the acting batch
    has one), e.g. a state-value network or BCQ's best-action value at the subgoal state. ``planner``/``value`` are
    network names in ``nets`` or objects."""

    def __init__(self, nets, planner="planner", value="value", num_samples: int = 100):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.nets, self.num_samples = nets, int(num_samples)
        self.planner, self.value = _component(nets, planner, "planner"), _component(nets, value, "value")
        self.last_values = None  # [B, n] scores of the last call (for inspection)

    def sample_subgoals(self, td: TensorDict, n: int | None = None) -> TensorDict:
        return _net_or_object(self.nets, self.planner).sample_subgoals(td, n or self.num_samples)

    @property
    def actor_goal_shapes(self) -> dict:
        return _net_or_object(self.nets, self.planner).actor_goal_shapes

    def get_subgoal_predictions(self, td: TensorDict) -> TensorDict:
        B, n = td.batch_size[0], self.num_samples
        cand = self.sample_subgoals(td, n)  # [B, n]
        flat = cand.reshape(B * n)
        state = {K.OBS: flat.get(K.SUBGOAL)}
        if K.GOAL in td.keys():
            state[K.GOAL] = td.get(K.GOAL).unsqueeze(1).expand(B, n).reshape(B * n)
        values = _net_or_object(self.nets, self.value)(TensorDict(state, batch_size=[B * n], device=td.device))
        values = values.reshape(B, n)
        self.last_values = values
        best = values.argmax(dim=1)
        return cand[torch.arange(B, device=best.device), best]

    def reset(self, batch_size: int, done: torch.Tensor | None = None) -> None:
        pass

    def state_dict(self) -> dict:
        return {}


class Hierarchical:
    """HBC/IRIS acting: every ``subgoal_update_interval`` steps of each environment (counted from its reset), ask
    the planner for a new subgoal; write the current subgoal as ``(goal_group, k)`` into the observation
    TensorDict and let the actor's acting path act on it.

    * ``planner``: a network name or object with ``get_subgoal_predictions(td) -> [B]`` TensorDict of
      ``("subgoal", k)`` (GL, GL_VAE), or a component spec such as ``{fn: ...acting.ValuePlanner, planner: ...,
      value: ..., num_samples: 100}``. Only the environments due for a new subgoal are planned for.
    * ``actor``: an acting-path spec (``{fn: ...acting.Recurrent, net: actor, horizon: 10}``) or object; it gets
      the same per-environment resets.
    * ``goal_group``: the group the actor's network reads its goal from (``"subgoal"``, or ``"goal"``).
    """

    def __init__(self, nets, planner="planner", actor=None, subgoal_update_interval: int = 10,
                 goal_group: str = K.SUBGOAL):
        if actor is None:
            raise ValueError("act.actor: the hierarchical acting path needs the actor's acting path, e.g. "
                             "{fn: modmimic.components.acting.Recurrent, net: actor, horizon: 10}")
        if subgoal_update_interval < 1:
            raise ValueError(f"subgoal_update_interval must be >= 1, got {subgoal_update_interval}")
        self.nets = nets
        self.planner = _component(nets, planner, "planner")
        self.actor = _component(nets, actor, "actor")
        self.interval, self.goal_group = int(subgoal_update_interval), goal_group
        self.counter, self.subgoal = None, None

    @property
    def current_subgoal(self) -> TensorDict | None:
        """The subgoal each environment follows now, ``[B]`` TensorDict with the planner's keys (robomimic
        ``current_subgoal``)."""
        if self.subgoal is None:
            return None
        return TensorDict({K.SUBGOAL: self.subgoal.clone()}, batch_size=self.subgoal.batch_size,
                          device=self.subgoal.device)

    def reset(self, batch_size: int, done: torch.Tensor | None = None) -> None:
        if done is None or self.counter is None or len(self.counter) != batch_size:
            self.counter, self.subgoal = torch.zeros(batch_size, dtype=torch.long), None
            done = None
        else:
            self.counter[done.cpu()] = 0
        for part in (self.planner, self.actor):
            if not isinstance(part, str) and hasattr(part, "reset") and not isinstance(part, torch.nn.Module):
                part.reset(batch_size, done)

    def _plan(self, td: TensorDict) -> TensorDict:
        planner = _net_or_object(self.nets, self.planner)
        return planner.get_subgoal_predictions(td).get(K.SUBGOAL)

    def __call__(self, td: TensorDict) -> torch.Tensor:
        B = td.batch_size[0]
        if self.counter is None or len(self.counter) != B:
            self.reset(B)
        due = (self.counter % self.interval) == 0
        if self.subgoal is None:
            self.subgoal = self._plan(td).clone()
        elif bool(due.all()):
            self.subgoal = self._plan(td).clone()
        elif bool(due.any()):
            rows = due.nonzero().squeeze(1).to(td.device)
            fresh = self._plan(td[rows])
            self.subgoal[rows] = fresh
        inp = td.clone(False)
        inp.set(self.goal_group, self.subgoal)
        action = self.actor(inp)
        self.counter += 1
        return action

    def state_dict(self) -> dict:
        return {}
