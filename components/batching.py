"""How sampled windows ``[B, T]`` become a recipe's training batch (robomimic's ``process_batch_for_training``).

Each function is pure: ``fn(batch, **recipe kwargs) -> batch``.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict

from modmimic import keys as K
from modmimic.keys import declare


@declare(reads=[K.ACTION])
def first_step(batch):
    """Single-step algorithms: every entry at the window's first step (robomimic ``[:, 0]``) -> ``[B]``."""
    return batch[:, 0] if batch.batch_dims == 2 else batch


@declare(reads=[K.ACTION])
def full_sequence(batch, open_loop: bool = False):
    """Sequence algorithms (BC-RNN): the whole window; ``open_loop`` replaces every observation by the first one
    (robomimic ``rnn.open_loop``)."""
    if open_loop:
        batch = batch.clone(False)
        obs = batch[K.OBS]
        for k, v in obs.items():
            obs[k] = v[:, :1].expand_as(v)
    return batch


@declare(reads=[K.ACTION], writes=[K.LOSS_MASK])
def transformer_window(batch, context_length: int, supervise_all_steps: bool = False,
                       pred_future_acs: bool = False):
    """BC-Transformer: observations ``[:, :context_length]``; actions of every step (``supervise_all_steps``, from
    step ``context_length - 1`` when ``pred_future_acs``) or of the last context step only."""
    T = batch.batch_size[1]
    if T < context_length:
        raise ValueError(f"windows have {T} steps but the transformer context is {context_length}: "
                         "set train.frame_stack = algo.transformer.context_length")
    out = batch[:, :context_length]
    if supervise_all_steps:
        start = context_length - 1 if pred_future_acs else 0
        acts = batch[K.ACTION][:, start:start + context_length]
        if acts.shape[1] != context_length:
            raise ValueError("pred_future_acs needs train.seq_length >= context_length")
        out = out.clone(False)
        out[K.ACTION] = acts
    else:
        # supervise the last context step only: losses reduce over the steps where the loss mask is True
        out = out.clone(False)
        mask = torch.zeros(out.batch_size, dtype=torch.bool, device=out.device)
        mask[:, -1] = True
        out[K.LOSS_MASK] = mask
    return out


@declare(reads=[K.ACTION])
def horizon_window(batch, obs_horizon: int, prediction_horizon: int, frame_stack: int):
    """Diffusion Policy (robomimic ``DiffusionPolicyUNet.process_batch_for_training``): windows sampled with
    ``train.frame_stack = To`` and ``train.seq_length = Tp`` (``To - 1 + Tp`` steps from ``t - To + 1``) ->
    a ``[B]`` batch of observations ``[B, To, ...]`` (steps ``t - To + 1 .. t``, goals likewise) and the action
    chunk ``[B, Tp, A]`` (steps ``t - To + 1 .. t + Tp - To``): chunk index ``To - 1`` is the current step ``t``."""
    B, T = batch.batch_size
    if frame_stack != obs_horizon or T < obs_horizon - 1 + prediction_horizon:
        raise ValueError(f"windows of {T} steps with train.frame_stack={frame_stack} do not hold To={obs_horizon} "
                         f"observations ending at the current step and Tp={prediction_horizon} actions: set "
                         "train.frame_stack = algo.horizon.observation_horizon and train.seq_length = "
                         "algo.horizon.prediction_horizon")
    out = {K.OBS: batch.get(K.OBS)[:, :obs_horizon], K.ACTION: batch.get(K.ACTION)[:, :prediction_horizon]}
    for k in (K.GOAL, K.TASK):  # goals; the task of multi-task runs (modmimic.tasks)
        if k in batch.keys():
            out[k] = batch.get(k)[:, :obs_horizon]
    return TensorDict(out, batch_size=[B], device=batch.device)


@declare(reads=[K.ACTION, K.MASK])
def action_chunk(batch, chunk_size: int, frame_stack: int = 1):
    """Action-chunking policies (ACT): ``[B, T]`` windows -> a ``[B]`` batch of the window's first step (its
    observation, goal, ...) whose ``action`` is the chunk of the next ``chunk_size`` actions ``[B, chunk_size, A]``
    and whose ``("collector", "mask")`` ``[B, chunk_size]`` is False where the chunk runs past the demo's end (the
    sampler repeats the last step there). Needs ``train.seq_length >= chunk_size`` and ``train.frame_stack = 1``."""
    if frame_stack != 1:
        raise ValueError(f"action chunks start at the current observation: train.frame_stack must be 1, got "
                         f"{frame_stack}")
    if batch.batch_dims != 2 or batch.batch_size[1] < chunk_size:
        raise ValueError(f"action chunks of {chunk_size} steps need [B, T >= {chunk_size}] windows, got batch size "
                         f"{tuple(batch.batch_size)}: set train.seq_length = algo.act.chunk_size")
    out = batch[:, 0]
    out.set(K.ACTION, batch.get(K.ACTION)[:, :chunk_size])
    out.set(K.MASK, batch.get(K.MASK)[:, :chunk_size])
    return out


# --- offline RL: n-step transitions ------------------------------------------------------------------------------

DISCOUNT = (K.NEXT, "discount")  # [B, 1] float: the bootstrap discount of each transition (gamma ** steps)


@declare(reads=[K.ACTION, K.REWARD, K.DONE, (K.NEXT, K.OBS)],
         writes=[DISCOUNT, "{next_action_key}", "{mc_return_key}"])
def n_step_transition(batch, n_step: int = 1, discount: float = 0.99, infinite_horizon: bool = False,
                      next_action_key: str | None = None, mc_return_key: str | None = None,
                      reward_scale: float = 1.0, reward_shift: float = 0.0, terminal_reward: float | None = None):
    """Windows ``[B, T]`` -> n-step transitions ``[B]`` (robomimic BCQ/CQL/TD3-BC ``process_batch_for_training``).

    * ``observation``, ``action``, ``goal``, ``index`` (when the windows carry it): step 0; ``("next",
      "observation")``: step ``n_step - 1``.
    * ``("next", "reward")`` = ``sum_i gamma^i r_i`` over the first ``n_step`` steps; ``("next", "done")`` (and
      ``terminated``) = any done among them; ``("next", "discount")`` = ``gamma^n_step``.
    * ``infinite_horizon``: the reward of done transitions is scaled by ``1 / (1 - gamma^n_step)``.
    * the goal is also placed in ``batch["next"]``, so ``batch["next"]`` is the next state that every network reads.
    * ``next_action_key`` (e.g. ``"next.action"``, ReBRAC's critic penalty): the data action at the next state, step
      ``n_step`` of the window (``train.seq_length >= n_step + 1``; at a demo's end the last action, repeated).
    * ``mc_return_key`` (``"mc_return"``, Cal-QL): the Monte-Carlo return-to-go of step 0, from windows that carry it
      (recipes that require ``mc_returns``; :mod:`modmimic.data.returns`).
    * ``reward_scale`` / ``reward_shift``: every step's reward becomes ``reward_scale * r + reward_shift`` before
      the sum (the CQL paper's sparse-task setting ``r - 1``: 0 at success, -1 per step before it). Refused with
      ``mc_return_key``: the stored returns-to-go are of the untransformed rewards.
    * ``terminal_reward``: a step whose (untransformed) reward is at least this ends its episode (``done``), so a
      success is terminal in the data as it is online with ``experiment.rollout.terminate_on_success`` (scripted and
      robomimic demos keep a reward of 1 on several steps after the first success: without it their values at a
      success are ~6 where an online episode's are 1). The loader computes Monte-Carlo returns with the same
      ``terminal_reward`` (:mod:`modmimic.data.returns`).

    With ``n_step = 1`` this is exactly robomimic's (and IQL's ``[:, 0]``) batch. For ``n_step > 1`` robomimic sums
    the rewards of every step of the window, including the steps that padding repeats at the end of a demo (the
    last reward counted several times) and the steps after a done. Here only the steps before the first done that
    are real data (``("collector", "mask")``) are summed, and the discount is ``gamma^k`` with ``k`` those steps
    (``gamma^n_step`` everywhere but at demo ends).
    """
    if batch.batch_dims == 1:
        batch = batch.unsqueeze(1)
    B, T = batch.batch_size
    if T < n_step:
        raise ValueError(f"windows have {T} steps but n_step={n_step}: set train.seq_length >= algo.n_step")
    nxt = batch.get(K.NEXT)
    r = nxt.get("reward", None)
    if r is None:
        raise ValueError("the batch has no ('next', 'reward'): this recipe needs a dataset with rewards and dones")
    d = nxt.get("done")
    if terminal_reward is not None:
        d = d | (r >= terminal_reward)
    if reward_scale != 1.0 or reward_shift != 0.0:
        if mc_return_key is not None:
            raise ValueError("reward_scale / reward_shift with Monte-Carlo returns: the stored returns-to-go are of "
                             "the untransformed rewards")
        r = r * reward_scale + reward_shift
    if n_step == 1:
        reward, done = r[:, 0], d[:, 0]
        gamma = torch.full_like(reward, discount)
    else:
        rs, ds = r[:, :n_step, 0], d[:, :n_step, 0]
        mask = batch.get(K.MASK, None)
        real = mask[:, :n_step] if mask is not None else torch.ones_like(ds)
        before_done = (torch.cumsum(ds.long(), 1) - ds.long()) == 0
        live = real & before_done
        powers = discount ** torch.arange(n_step, device=rs.device, dtype=rs.dtype)
        reward = (rs * powers * live).sum(1, keepdim=True)
        done = (ds & live).any(1, keepdim=True)
        gamma = discount ** live.sum(1, keepdim=True).to(rs.dtype)
    if infinite_horizon:
        reward = torch.where(done, reward / (1.0 - discount ** n_step), reward)
    obs = {k: v[:, 0] for k, v in batch.get(K.OBS).items()}
    next_obs = {k: v[:, n_step - 1] for k, v in nxt.get(K.OBS).items()}
    out_next = {K.OBS: next_obs, "reward": reward, "done": done, "terminated": done, "discount": gamma}
    out = {K.OBS: obs, K.ACTION: batch.get(K.ACTION)[:, 0], K.NEXT: out_next}
    goals = batch.get(K.GOAL, None)
    if goals is not None:
        goal = {k: v[:, 0] for k, v in goals.items()}
        out[K.GOAL] = goal
        out_next[K.GOAL] = goal
    td = TensorDict._new_unsafe(out, batch_size=torch.Size([B]), device=batch.device)
    index = batch.get(K.INDEX, None)
    if index is not None:  # where each row was sampled (online rows: negative), for updates on offline rows only
        td.set(K.INDEX, index[:, 0])
    if next_action_key is not None:
        if T < n_step + 1:
            raise ValueError(f"windows have {T} steps but the next action needs n_step + 1 = {n_step + 1}: set "
                             f"train.seq_length >= {n_step + 1}")
        td.set(K.as_key(next_action_key), batch.get(K.ACTION)[:, n_step])
    if mc_return_key is not None:
        if K.MC_RETURN not in batch.keys():
            raise ValueError("the batch has no Monte-Carlo returns ('mc_return'): the recipe must list mc_returns in "
                             "its requires (the training loop then adds them to the episode store)")
        td.set(K.as_key(mc_return_key), batch.get(K.MC_RETURN)[:, 0])
    return td


def next_state(batch):
    """``batch["next"]`` as a state TensorDict (next observation, and the goal when the batch has one); the batch is
    never modified (:func:`n_step_transition` batches already carry the goal in ``next``)."""
    nxt = batch.get(K.NEXT)
    if K.GOAL in batch.keys() and K.GOAL not in nxt.keys():
        nxt = nxt.clone(False)
        nxt.set(K.GOAL, batch.get(K.GOAL))
    return nxt


# --- hierarchical recipes: subgoal targets -----------------------------------------------------------------------

def _keys_of(subgoal_keys, available) -> list:
    """A key list, robomimic's ``{modality: [keys]}`` section, or None (every key in ``available``)."""
    if subgoal_keys is None:
        return list(available)
    if isinstance(subgoal_keys, dict):
        out = []
        for ks in subgoal_keys.values():
            out += [k for k in (ks or []) if k not in out]
        return out
    return list(subgoal_keys)


def subgoal_targets(batch, subgoal_horizon: int = 10, subgoal_keys=None, random_subgoals: bool = False) -> dict:
    """Subgoals of ``[B, T]`` windows: ``{k: next_obs[:, subgoal_horizon - 1]}`` (robomimic GL's ``subgoals`` /
    ``target_subgoals``, the observation ``subgoal_horizon`` steps after the window's first), or with
    ``random_subgoals`` ``next_obs[b, i_b]`` with ``i_b`` uniform in ``[0, T)`` per window (HBC
    ``actor_use_random_subgoals``; robomimic draws in ``[0, seq_length)``, the same range when ``frame_stack`` is 1).
    ``subgoal_keys``: a list, ``observation.modalities.subgoal``, or None for every next-observation key. Near a
    demo's end the padded windows repeat its last step, so the subgoal is the last observation."""
    if batch.batch_dims != 2:
        raise ValueError(f"subgoal targets need [B, T] windows, got batch size {tuple(batch.batch_size)}")
    B, T = batch.batch_size
    if not 1 <= subgoal_horizon <= T:
        raise ValueError(f"subgoal_horizon={subgoal_horizon} but windows have {T} steps: set train.seq_length >= "
                         "algo.subgoal_horizon (and subgoal_horizon >= 1)")
    if (K.NEXT, K.OBS) not in batch.keys(include_nested=True):
        raise ValueError("subgoal targets are future observations: the batch has no ('next', 'observation'); set "
                         "train.hdf5_load_next_obs=true")
    nobs = batch.get((K.NEXT, K.OBS))
    keys = _keys_of(subgoal_keys, nobs.keys())
    missing = [k for k in keys if k not in nobs.keys()]
    if missing:
        raise ValueError(f"subgoal keys {missing} are not in the batch's next observations "
                         f"(have: {sorted(nobs.keys())}); subgoal keys must be observation keys")
    if random_subgoals:
        idx = torch.randint(0, T, (B,), device=batch.device)
        rows = torch.arange(B, device=batch.device)
        return {k: nobs.get(k)[rows, idx] for k in keys}
    return {k: nobs.get(k)[:, subgoal_horizon - 1] for k in keys}


@declare(reads=[(K.NEXT, K.OBS)], writes=[K.SUBGOAL])
def subgoal_step(batch, subgoal_horizon: int = 10, subgoal_keys=None, random_subgoals: bool = False):
    """Planner batches (robomimic GL): the window's first step (``[B]``, as :func:`first_step`) plus the subgoal
    targets ``("subgoal", k)`` of :func:`subgoal_targets`."""
    sub = subgoal_targets(batch, subgoal_horizon, subgoal_keys, random_subgoals)
    out = batch[:, 0]
    out.set(K.SUBGOAL, TensorDict(sub, batch_size=out.batch_size, device=out.device))
    return out


@declare(reads=[(K.NEXT, K.OBS)], writes=["{goal_group}"])
def subgoal_sequence(batch, subgoal_horizon: int = 10, subgoal_keys=None, actor_use_random_subgoals: bool = False,
                     goal_group: str = K.SUBGOAL, open_loop: bool = False):
    """Actor batches of a hierarchical recipe (HBC ``separate`` mode): the whole window (as :func:`full_sequence`)
    with its subgoal written as ``(goal_group, k)`` and repeated over the window's ``T`` steps (a goal-conditioned
    RNN actor reads one goal per sequence). The subgoal is the observation ``subgoal_horizon`` steps ahead, or a
    random step of the window with ``actor_use_random_subgoals``."""
    sub = subgoal_targets(batch, subgoal_horizon, subgoal_keys, actor_use_random_subgoals)
    out = full_sequence(batch, open_loop).clone(False)
    B, T = out.batch_size
    out.set(goal_group, TensorDict({k: v.unsqueeze(1).expand(B, T, *v.shape[1:]) for k, v in sub.items()},
                                   batch_size=out.batch_size, device=out.device))
    return out
