"""Acting paths: how a recipe turns the current observation into an action at test time.

An acting path holds per-environment state for a batch of ``B`` environments. ``reset(B)`` starts every
environment afresh, ``reset(B, done)`` only those where the bool mask ``done`` is True (parallel evaluation).
``__call__(td)`` takes a ``[B]`` TensorDict of the current observation (and goal) and returns ``[B, A]`` actions.
Networks are looked up in the algorithm's ``nets`` by name at call time.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict


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


class Context:
    """Rolling context of the last ``context_length`` observations per environment (the frame-stack wrapper of
    robomimic, kept inside the policy): at a reset the first observation fills the context, as robomimic's
    ``FrameStackWrapper`` does. Acts with the network output at the last step (the first with
    ``pred_future_acs``)."""

    def __init__(self, nets, net: str = "policy", context_length: int = 10, pred_future_acs: bool = False):
        self.nets, self.net, self.K, self.pred_future_acs = nets, net, int(context_length), pred_future_acs
        self.ctx, self.fresh = None, None

    def reset(self, batch_size: int, done: torch.Tensor | None = None) -> None:
        if done is None or self.fresh is None or len(self.fresh) != batch_size:
            self.ctx, self.fresh = None, torch.ones(batch_size, dtype=torch.bool)
        else:
            self.fresh = self.fresh | done.cpu()

    def __call__(self, td: TensorDict) -> torch.Tensor:
        B = td.batch_size[0]
        if self.fresh is None or len(self.fresh) != B:
            self.reset(B)
        step = td.unsqueeze(1)
        if self.ctx is None:
            self.ctx = step.expand(B, self.K).clone()
        else:
            fresh = self.fresh.to(td.device)
            filled = step.expand(B, self.K)
            shifted = torch.cat([self.ctx[:, 1:], step], dim=1)
            self.ctx = torch.where(fresh[:, None].expand(B, self.K), filled, shifted)
        self.fresh = torch.zeros(B, dtype=torch.bool)
        out = self.nets[self.net].act(self.ctx)
        return out[:, 0] if self.pred_future_acs else out[:, -1]



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
