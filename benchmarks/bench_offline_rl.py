"""Training-step cost of the offline-RL recipes (IQL, TD3-BC, CQL) next to the same math in bare PyTorch, in one
process, with robomimic's default networks and batch sizes.

Prints one JSON line per measurement: ``workload``, ``steps_per_s``, ``ms_per_step``, ``ratio_vs_torch`` (bare
eager step time / this step time, median over interleaved rounds: 1.0 = no framework tax, > 1 = faster than bare
eager), ``threads``.

* modmimic step = ``sampler.sample()`` + ``algo.process_batch_for_training`` (n-step transition) +
  ``algo.train_on_batch`` (what the training loop does; its log values stay on the device until the epoch ends).
* bare step = index per-key tensors with random rows (obs, next obs, action, reward, done), ``torch.cat`` the
  observation keys, then the algorithm written out by hand with ``nn.Sequential`` MLPs and the same update order,
  optimizers, targets and polyak (``_foreach_lerp_``), and one ``.item()``.
* ``modmimic+compile/<name>``: the same recipe with ``train.compile=true`` (each loss, target and optimizer step
  compiled by ``torch.compile``); its ratio is against the bare *eager* step.
* ``modmimic+fused/<name>`` (``--fused``): the same recipe with ``train.fused_optimizer=true`` (torch's fused Adam
  kernel; the bare step keeps torch's default Adam, as a hand-written loop would).

Workloads (robomimic defaults): IQL (300,400) nets, batch 100; TD3-BC (256,256), batch 256 (actor every 2nd step);
CQL (300,400), batch 1024, 10 random + 10 + 10 policy candidates. Steps run interleaved (A B A B ...) over
``--repeats`` rounds of ``--steps`` steps; the median round time and the median per-round ratio are reported. Data: a synthetic robomimic-format file
with Lift-like low-dim keys (19 obs dims, 7-D actions), random rewards and dones.

Usage: ``python benchmarks/bench_offline_rl.py [--threads 1] [--repeats 7] [--steps 20] [--only iql,td3_bc,cql]
[--compile] [--fused] [--profile N]``. ``--profile N`` then profiles ``N`` steps of each eager variant with
``torch.profiler`` and prints, per variant, the ops taking the most self CPU time (where the time goes).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, Normal

from common import ACT, OBS, compare, make_dataset, modmimic_setup
from modmimic import keys as K
from modmimic.components.nets.heads import TanhWrapped
from modmimic.data.hdf5 import load_episode_store

OBS_DIM = sum(OBS.values())


# --- bare PyTorch ----------------------------------------------------------------------------------------------

def mlp(i, o, hidden):
    layers, d = [], i
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, o))
    return nn.Sequential(*layers)


def polyak(target, source, tau):
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


class BareData:
    """Per-key tensors and random rows: the minimum data path of a hand-written offline-RL loop."""

    def __init__(self, store, batch_size, seed=0):
        keys = sorted(OBS)
        col = lambda key: store.flat[:, store.columns[key][0]:store.columns[key][1]].contiguous()  # noqa: E731
        self.obs = [col(K.obs(k)) for k in keys]
        self.nobs = [col(K.next_obs(k)) for k in keys]
        self.act, self.rew = col(K.ACTION), col(K.REWARD)
        self.done = col(K.DONE) != 0
        self.g = torch.Generator().manual_seed(seed)
        self.n, self.B = store.flat.shape[0], batch_size

    def sample(self):
        i = torch.randint(self.n, (self.B,), generator=self.g)
        return (torch.cat([o[i] for o in self.obs], -1), self.act[i], self.rew[i], self.done[i],
                torch.cat([o[i] for o in self.nobs], -1))


class GaussianActor(nn.Module):
    """robomimic's Gaussian actor: tanh mean and scaled softplus std (IQL), or clamped mean, exp std and a tanh
    wrapper (CQL); std clamped to [0.007, 7.5]; last layer initialised uniformly in +-init_last_fc_weight."""

    def __init__(self, hidden, cql=False, init_std=0.3, init_w=0.001):
        super().__init__()
        self.body = mlp(OBS_DIM, 0, hidden)[:-1]
        self.out = nn.Linear(hidden[-1], 2 * ACT)
        nn.init.uniform_(self.out.weight, -init_w, init_w)
        nn.init.uniform_(self.out.bias, -init_w, init_w)
        self.cql, self.scale = cql, init_std / math.log(2.0)

    def forward(self, x):
        out = self.out(self.body(x))
        mean, raw = out[..., :ACT], out[..., ACT:]
        if self.cql:
            dist = Independent(Normal(mean.clamp(-9, 9), torch.exp(raw).clamp(0.007, 7.5)), 1)
            return TanhWrapped(dist)
        return Independent(Normal(torch.tanh(mean), (F.softplus(raw) * self.scale).clamp(0.007, 7.5)), 1)


def bare_iql(data, gamma=0.99, tau=0.01, quantile=0.9, beta=1.0, lr=1e-4, hidden=(300, 400)):
    q1, q2 = mlp(OBS_DIM + ACT, 1, hidden), mlp(OBS_DIM + ACT, 1, hidden)
    q1t, q2t = copy.deepcopy(q1).requires_grad_(False), copy.deepcopy(q2).requires_grad_(False)
    vf, actor = mlp(OBS_DIM, 1, hidden), GaussianActor(hidden)
    opt_q = torch.optim.Adam(list(q1.parameters()) + list(q2.parameters()), lr=lr)
    opt_v, opt_a = torch.optim.Adam(vf.parameters(), lr=lr), torch.optim.Adam(actor.parameters(), lr=lr)

    def step():
        obs, act, rew, done, nobs = data.sample()
        x = torch.cat([obs, act], -1)
        with torch.no_grad():
            y = rew + (1.0 - done.float()) * gamma * vf(nobs)
            q_hat = torch.min(q1t(x), q2t(x))
        q_loss = F.mse_loss(q1(x), y) + F.mse_loss(q2(x), y)
        opt_q.zero_grad(set_to_none=True)
        q_loss.backward()
        opt_q.step()
        polyak(q1t, q1, tau)
        polyak(q2t, q2, tau)
        v = vf(obs)
        err = v - q_hat
        v_loss = (torch.where(err > 0, 1 - quantile, quantile) * err.pow(2)).mean()
        opt_v.zero_grad(set_to_none=True)
        v_loss.backward()
        opt_v.step()
        w = torch.exp((q_hat - v.detach())[:, 0] / beta).clamp(max=100.0)
        a_loss = -(actor(obs).log_prob(act) * w).mean()
        opt_a.zero_grad(set_to_none=True)
        a_loss.backward()
        opt_a.step()
        return (q_loss + v_loss + a_loss).item()

    return step


def bare_td3_bc(data, gamma=0.99, tau=0.005, alpha=2.5, noise=0.2, clip=0.5, lr=3e-4, hidden=(256, 256)):
    q1, q2 = mlp(OBS_DIM + ACT, 1, hidden), mlp(OBS_DIM + ACT, 1, hidden)
    actor = nn.Sequential(mlp(OBS_DIM, ACT, hidden), nn.Tanh())
    q1t, q2t, actor_t = (copy.deepcopy(m).requires_grad_(False) for m in (q1, q2, actor))
    opt_q = torch.optim.Adam(list(q1.parameters()) + list(q2.parameters()), lr=lr)
    opt_a = torch.optim.Adam(actor.parameters(), lr=lr)
    counter = [0]

    def step():
        obs, act, rew, done, nobs = data.sample()
        with torch.no_grad():
            a2 = actor_t(nobs)
            a2 = (a2 + (torch.randn_like(a2) * noise).clamp(-clip, clip)).clamp(-1.0, 1.0)
            x2 = torch.cat([nobs, a2], -1)
            y = rew + (1.0 - done.float()) * gamma * torch.min(q1t(x2), q2t(x2))
        x = torch.cat([obs, act], -1)
        loss = F.mse_loss(q1(x), y) + F.mse_loss(q2(x), y)
        opt_q.zero_grad(set_to_none=True)
        loss.backward()
        opt_q.step()
        counter[0] += 1
        if counter[0] % 2 == 0:
            pi = actor(obs)
            q = q1(torch.cat([obs, pi], -1))
            a_loss = -alpha / q.abs().mean().detach() * q.mean() + F.mse_loss(pi, act)
            opt_a.zero_grad(set_to_none=True)
            a_loss.backward()
            opt_a.step()
            for t, s in ((q1t, q1), (q2t, q2), (actor_t, actor)):
                polyak(t, s, tau)
            loss = loss + a_loss
        return loss.item()

    return step


def bare_cql(data, gamma=0.99, tau=0.005, n_random=10, target_q_gap=5.0, lr_q=1e-3, lr_a=3e-4, hidden=(300, 400)):
    q1, q2 = mlp(OBS_DIM + ACT, 1, hidden), mlp(OBS_DIM + ACT, 1, hidden)
    q1t, q2t = copy.deepcopy(q1).requires_grad_(False), copy.deepcopy(q2).requires_grad_(False)
    actor = GaussianActor(hidden, cql=True)
    log_alpha, log_w = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))
    opt_q = torch.optim.Adam(list(q1.parameters()) + list(q2.parameters()), lr=lr_q)
    opt_a = torch.optim.Adam(actor.parameters(), lr=lr_a)
    opt_alpha, opt_w = torch.optim.Adam([log_alpha], lr=lr_a), torch.optim.Adam([log_w], lr=lr_q)
    B, N = data.B, n_random

    def qs(obs, a):  # [B, n, A] candidates scored at obs -> [2, B, n]
        x = torch.cat([obs.unsqueeze(1).expand(-1, a.shape[1], -1), a], -1)
        return torch.stack([q1(x)[..., 0], q2(x)[..., 0]])

    def step():
        obs, act, rew, done, nobs = data.sample()
        # actor + entropy weight
        a, lp = actor(obs).rsample_with_log_prob()
        x_pi = torch.cat([obs, a], -1)
        a_loss = (log_alpha.exp().detach() * lp - torch.min(q1(x_pi), q2(x_pi))[:, 0]).mean()
        alpha_loss = -(log_alpha * (lp.detach() - ACT)).mean()
        opt_a.zero_grad(set_to_none=True)
        opt_alpha.zero_grad(set_to_none=True)
        (a_loss + alpha_loss).backward()
        opt_a.step()
        opt_alpha.step()
        # critic + CQL weight
        with torch.no_grad():
            curr, nxt = actor(obs), actor(nobs)
            a2, _ = nxt.rsample_with_log_prob()
            x2 = torch.cat([nobs, a2], -1)
            y = rew + (1.0 - done.float()) * gamma * torch.min(q1t(x2), q2t(x2))
            rand = torch.empty(B, N, ACT).uniform_(-1.0, 1.0)
            ca, clp = curr.rsample_with_log_prob((N,))
            na, nlp = nxt.rsample_with_log_prob((N,))
            cand = torch.cat([rand, ca.transpose(0, 1), na.transpose(0, 1)], 1)
            logd = torch.cat([torch.full((B, N), ACT * math.log(0.5)), clp.T, nlp.T], 1)
        x = torch.cat([obs, act], -1)
        q_pred = torch.stack([q1(x), q2(x)])  # [2, B, 1]
        td = ((q_pred - y) ** 2).mean((1, 2)).sum()
        gap = torch.logsumexp(qs(obs, cand) - logd, -1).mean(-1) - q_pred.mean((1, 2))
        w = log_w.exp().clamp(0.0, 1e6)
        loss = td + (w.detach() * (gap - target_q_gap)).sum() - (w * (gap.detach() - target_q_gap)).mean()
        opt_q.zero_grad(set_to_none=True)
        opt_w.zero_grad(set_to_none=True)
        loss.backward()
        opt_q.step()
        opt_w.step()
        polyak(q1t, q1, tau)
        polyak(q2t, q2, tau)
        return (a_loss + alpha_loss + loss).item()

    return step


# --- workloads: name, robomimic's batch size, bare step, recipe overrides --------------------------------------

WORKLOADS = {
    "iql": ("iql_300x400_b100", 100, bare_iql, []),
    "td3_bc": ("td3_bc_256x256_b256", 256, bare_td3_bc, []),
    "cql": ("cql_300x400_b1024", 1024, bare_cql, []),
}


def profile(name: str, variants: list, steps: int, top: int = 12) -> None:
    """Print (stderr) the ``top`` ops by self CPU time over ``steps`` steps of each variant."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for w, s in variants:
        s()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                s()
        print(f"--- {w}/{name}: {steps} steps", file=sys.stderr)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top), file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--only", default="iql,td3_bc,cql")
    p.add_argument("--compile", action="store_true", help="also measure train.compile=true")
    p.add_argument("--fused", action="store_true", help="also measure train.fused_optimizer=true")
    p.add_argument("--profile", type=int, default=0, help="profile this many steps of each eager variant")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.hdf5")
        make_dataset(path)
        store = load_episode_store(path, list(OBS))
        print(json.dumps({"dataset_samples": store.num_samples, "torch": torch.__version__}), file=sys.stderr)
        for recipe in args.only.split(","):
            name, B, bare_fn, extra = WORKLOADS[recipe]
            steps = max(2, args.steps // 10) if recipe == "cql" else args.steps
            torch.manual_seed(0)
            variants = [("modmimic", modmimic_setup(store, recipe, B, extra)[0])]
            if args.compile:
                torch.manual_seed(0)
                variants.append(("modmimic+compile", modmimic_setup(store, recipe, B, [*extra, "train.compile=true"])[0]))
            if args.fused:
                torch.manual_seed(0)
                fused = modmimic_setup(store, recipe, B, [*extra, "train.fused_optimizer=true"])[0]
                variants.append(("modmimic+fused", fused))
            torch.manual_seed(0)
            variants.append(("torch", bare_fn(BareData(store, B))))
            if args.repeats:
                compare(name, variants, steps, args.repeats, args.threads)
            if args.profile:
                profile(name, [v for v in variants if "+" not in v[0]],
                        max(1, args.profile // 10) if recipe == "cql" else args.profile)


if __name__ == "__main__":
    main()
