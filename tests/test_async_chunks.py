"""Asynchronous chunked execution (``modmimic.chunking``): at zero delay the executor acts exactly as the in-process
acting path (Diffusion Policy bit for bit, ACT's temporal ensembling to float rounding, BC-RNN through per-env forks),
with episode resets of some environments; under a simulated delay the executed actions are the closed-form ones
(sync holds and replays stale chunks, async drops the past and stays on time); ``predict_chunk`` through the server
equals in-process; ``modmimic.eval latency_ms=`` runs both modes and refuses bad arguments; on the point-reach task
async execution under latency does at least as well as sync with a policy that learned it."""
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from deploy_ckpts import train_checkpoint
from modmimic.chunking import ChunkExecutor, StepSource, executor_for, latency_to_steps
from modmimic.client import RemoteError, RemotePolicy
from modmimic.eval import ArgumentError, evaluate
from modmimic.policy import policy_from_checkpoint
from modmimic.serve import server_from_checkpoint

STEPS = 22


@pytest.fixture(scope="module")
def ckpts(reach_hdf5, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {r: train_checkpoint(d / f"{r}.pth", reach_hdf5, r) for r in ("bc_rnn", "diffusion_policy", "act")}


def observations(policy, seed, num_envs, n=STEPS):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal((num_envs, *s)).astype(np.float32) for k, s in policy.policy.obs_shapes.items()}
            for _ in range(n)]


def drive(policy, obs, seed, reset_at=(7, 15), reset_rows=(1,)):
    """Actions of ``policy`` over the observation batches, environments ``reset_rows`` starting a new episode at
    the steps ``reset_at``."""
    torch.manual_seed(seed)
    num_envs = next(iter(obs[0].values())).shape[0]
    policy.start_episode(num_envs)
    out = []
    for t, o in enumerate(obs):
        if t in reset_at:
            done = np.zeros(num_envs, dtype=bool)
            done[list(reset_rows)] = True
            policy.reset_envs(done)
        out.append(np.asarray(policy(o, batched_ob=True)))
    return out


@pytest.mark.parametrize("recipe,mode", [("diffusion_policy", "sync"), ("diffusion_policy", "async"),
                                         ("act", "async"), ("act", "sync"), ("bc_rnn", "sync")])
def test_zero_delay_executor_equals_the_in_process_acting_path(recipe, mode, ckpts):
    policy, _ = policy_from_checkpoint(ckpt_path=ckpts[recipe])
    obs = observations(policy, 3, num_envs=3)
    want = drive(policy, obs, seed=9)
    ex = executor_for(policy_from_checkpoint(ckpt_path=ckpts[recipe])[0], latency_steps=0, mode=mode)
    got = drive(ex, obs, seed=9)
    if recipe == "act":  # the same proposals and weights, averaged by numpy instead of torch
        assert ex.merge == "ensemble"
        np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=0, atol=2e-6)
    elif recipe == "bc_rnn":  # one fork per environment: batches of 1 instead of 3 round differently
        np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=0, atol=1e-5)
    else:
        assert all(np.array_equal(w, g) for w, g in zip(want, got)), recipe
    assert ex.stalls == 0
    assert len({g.tobytes() for g in got}) > 3


class StepStamp:
    """A chunk source whose chunk from an observation taken at step ``t`` is ``[100 t, 100 t + 1, ...]``."""

    def __init__(self, H=8):
        self.H, self.calls, self.prefixes = H, [], []

    def __call__(self, window, prefix=None):
        t = window["t"][:, -1, 0]
        self.calls.append(t.tolist())
        self.prefixes.append(None if prefix is None else prefix[..., 0].tolist())
        return (100 * t[:, None, None] + np.arange(self.H)[None, :, None]).astype(np.float32)


def run_stamped(n, H=8, **kw):
    src = StepStamp(H)
    ex = ChunkExecutor(src, {"t": (1,)}, action_dim=1, chunk_size=4, **kw)
    ex.start_episode(1)
    return [float(ex({"t": np.array([t], np.float32)})[0]) for t in range(n)], ex, src


def test_sync_holds_and_replays_stale_chunks_async_stays_on_time():
    sync, ex, _ = run_stamped(15, mode="sync", latency_steps=2)
    # ask at 0, wait 2 steps holding zeros, play the chunk from its start; ask again when it is spent (step 6) ...
    assert sync == [0, 0, 0, 1, 2, 3, 3, 3, 600, 601, 602, 603, 603, 603, 1200]
    assert ex.stalls == 6 and ex.requests == 3
    asyn, ex, src = run_stamped(15, mode="async", latency_steps=2)
    # ... async asks when max(delay, H - chunk_size) = 4 actions are left and drops the 2 that passed
    assert asyn == [0, 0, 2, 3, 4, 5, 402, 403, 404, 405, 802, 803, 804, 805, 1202]
    assert src.calls == [[0], [4], [8], [12]] and ex.stalls == 2
    # a delay longer than H - chunk_size: asked for just in time, re-planned every `delay` steps, no stall
    late, ex, _ = run_stamped(19, H=12, mode="async", latency_steps=6)
    assert late == [0] * 6 + [6, 7, 8, 9, 10, 11, 606, 607, 608, 609, 610, 611, 1206]
    assert ex.stalls == 6
    # one request in flight at a time: a chunk that has only H - delay = 2 fresh actions left cannot keep up
    short, ex, _ = run_stamped(14, H=8, mode="async", latency_steps=6)
    assert short == [0] * 6 + [6, 7, 7, 7, 7, 7, 606, 607] and ex.stalls == 6 + 4
    # ... unless requests are pipelined: with 6 in flight a chunk asked for at every step arrives at every step
    piped, ex, src = run_stamped(14, H=8, mode="async", latency_steps=6, in_flight=6)
    assert piped == [0] * 6 + [6, 106, 206, 306, 406, 506, 606, 706] and ex.stalls == 6
    assert src.calls[:7] == [[t] for t in range(7)]
    # zero delay: async re-plans after chunk_size steps exactly as sync does
    assert run_stamped(12, mode="async", latency_steps=0)[0] == run_stamped(12, mode="sync", latency_steps=0)[0]


def test_ensemble_merge_closed_form():
    k = 0.5
    acts, ex, _ = run_stamped(4, mode="async", latency_steps=1, merge="ensemble", ensemble_k=k, refill_at=8)
    # a chunk every step (one in flight at a time: asked at 0, 1, 2; arriving at 1, 2, 3)
    assert acts[0] == 0 and acts[1] == 1
    w = np.exp(k * np.array([2.0, 1.0]))  # at step 2: chunk from 0 (age 2) proposes 2, chunk from 1 proposes 101
    assert acts[2] == pytest.approx(float((w * [2, 101]).sum() / w.sum()), abs=1e-4)
    w = np.exp(k * np.array([3.0, 2.0, 1.0]))
    assert acts[3] == pytest.approx(float((w * [3, 102, 201]).sum() / w.sum()), abs=1e-4)


def test_step_policies_wait_for_each_action(ckpts):
    policy, _ = policy_from_checkpoint(ckpt_path=ckpts["bc_rnn"])
    ex = executor_for(policy, latency_steps=2, mode="async")
    assert isinstance(ex.source, StepSource) and ex.mode == "sync"
    obs = observations(policy, 0, num_envs=2, n=9)
    got = drive(ex, obs, seed=0, reset_at=())
    # actions arrive at steps 2, 5, 8 (one request at a time); zeros before, held in between
    assert np.array_equal(got[0], 0 * got[0]) and np.array_equal(got[1], got[0])
    assert np.array_equal(got[3], got[2]) and np.array_equal(got[4], got[2]) and not np.array_equal(got[5], got[2])
    fork = policy.fork()
    fork.start_episode(1)
    first = fork({k: v[0] for k, v in obs[0].items()})  # the action computed from step 0's observation
    assert np.array_equal(got[2][0], first)


def test_latency_to_steps():
    assert latency_to_steps(0, 20) == 0 and latency_to_steps(100, 20) == 2 and latency_to_steps(300, 20) == 6
    assert latency_to_steps(101, 20) == 3 and latency_to_steps(50, 10) == 1
    with pytest.raises(ValueError):
        latency_to_steps(-1, 20)


def test_predict_chunk_through_the_server_equals_in_process(ckpts):
    path = ckpts["diffusion_policy"]
    server = server_from_checkpoint(path, port=0).start()
    try:
        policy, _ = policy_from_checkpoint(ckpt_path=path)
        obs = observations(policy, 5, num_envs=2)
        want = drive(executor_for(policy, latency_steps=3, mode="async"), obs, seed=4)
        remote = RemotePolicy(server.url)
        remote.start_episode(seed=4)  # the session's RNG stream is torch.manual_seed(4)'s
        assert remote.chunking == policy.chunking and remote.chunking["obs_horizon"] == 2
        ex = executor_for(remote, latency_steps=3, mode="async")
        ex.start_episode(2)
        got = []
        for t, o in enumerate(obs):
            if t in (7, 15):
                ex.reset_envs(np.array([False, True]))
            got.append(ex(o, batched_ob=True))
        assert all(np.array_equal(w, g) for w, g in zip(want, got))
        # malformed windows are refused, the session goes on
        one = {k: v[0] for k, v in obs[0].items()}
        with pytest.raises(RemoteError, match="obs_horizon|shape"):
            remote.predict_chunk(one)  # a single observation, not a window
        bad = {k: np.stack([v, v]) for k, v in one.items()}
        bad["pos"] = bad["pos"] * np.nan
        with pytest.raises(RemoteError, match="NaN"):
            remote.predict_chunk(bad)
        window = {k: np.stack([v, v]) for k, v in one.items()}
        assert remote.predict_chunk(window).shape == (7, 2)  # prediction horizon 8 from index obs_horizon - 1
        remote.close()
        bc_rnn = server_from_checkpoint(ckpts["bc_rnn"], port=0).start()
        try:
            r = RemotePolicy(bc_rnn.url)
            assert r.chunking is None
            with pytest.raises(RemoteError, match="one step at a time"):
                r._request({"op": "chunk", "obs": window, "batched": False})
            r.close()
        finally:
            bc_rnn.stop()
    finally:
        server.stop()


def test_real_time_executor_keeps_acting_while_the_chunk_is_computed():
    class Slow(StepStamp):
        def __call__(self, window):
            time.sleep(0.05)
            return super().__call__(window)

    # long chunks: a delay spike under load cannot empty the queue, so every step after the first chunk is covered
    ex = ChunkExecutor(Slow(H=40), {"t": (1,)}, action_dim=1, chunk_size=4, mode="async", latency_steps=None)
    ex.start_episode(1)
    acts = []
    for t in range(40):
        acts.append(float(ex({"t": np.array([t], np.float32)})[0]))
        time.sleep(0.01)
    ex.close()
    assert ex.measured_delay >= 1 and ex.requests >= 3
    # every executed action comes from a chunk computed at an earlier step, aligned to the step it was meant for
    steps = [t for t, a in enumerate(acts) if a > 0]
    assert len(steps) > 20 and steps == list(range(steps[0], 40))
    assert all(int(acts[t] // 100) + int(round(acts[t] % 100)) == t for t in steps)
    assert len({int(acts[t] // 100) for t in steps}) >= 3  # several chunks were merged in


def test_eval_latency(ckpts, tmp_path):
    ck = ckpts["diffusion_policy"]
    kw = dict(episodes=2, horizon=12, seed=5)
    plain = evaluate(ck, **kw)
    zero = evaluate(ck, latency_ms=0, execution="sync", control_hz=20, **kw)
    assert zero["episodes"] == plain["episodes"] and zero["stalled_steps"] == 0
    late = evaluate(ck, latency_ms=100, control_hz=20, **kw)
    assert late["latency_steps"] == 2 and late["execution"] == "async" and late["stalled_steps"] == 2 * 2
    with pytest.raises(ArgumentError, match="control_hz"):
        evaluate(ck, latency_ms=100, **kw)  # the reach task has no control_freq
    r = subprocess.run([sys.executable, "-m", "modmimic.eval", f"checkpoint={ck}", "episodes=1", "horizon=5",
                        "latency_ms=300", "control_hz=20", "execution=sync", "quiet=true"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "latency 300 ms = 6 control steps, sync execution" in r.stdout
    for bad in (["execution=later", "latency_ms=10", "control_hz=20"], ["merge=latest"], ["latency_ms=-5"]):
        r = subprocess.run([sys.executable, "-m", "modmimic.eval", f"checkpoint={ck}", *bad],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)


def test_inpainting_sends_the_actions_executed_while_the_chunk_is_computed():
    acts, ex, src = run_stamped(11, mode="async", latency_steps=2, inpaint=True)
    assert src.calls == [[0], [4], [8]]
    # at step 4 the queue will play 4 and 5 before the new chunk arrives; at step 0 nothing is queued
    assert src.prefixes == [None, [[4.0, 5.0]], [[404.0, 405.0]]]
    assert run_stamped(7, mode="sync", latency_steps=2, inpaint=True)[2].prefixes == [None, None]


def test_inpainted_chunk_holds_the_prefix_and_schedules_noise_it_in_closed_form():
    from modmimic.components.nets.diffusion_schedule import NoiseSchedule
    from modmimic.components.nets.flow import FlowSchedule

    x, n = torch.full((1, 2, 1), 3.0), torch.full((1, 2, 1), -1.0)
    flow = FlowSchedule(steps=4, time_scale=100.0)
    assert torch.allclose(flow.noised_after(x, n, 50.0), 0.25 * n + 0.75 * x)  # t = 0.5, one step of 0.25 on
    assert torch.equal(flow.noised_after(x, n, 75.0), x)
    ddim = NoiseSchedule("ddim", num_train_timesteps=100, num_inference_timesteps=10)
    a = ddim._a_prev(50)
    assert torch.allclose(ddim.noised_after(x, n, 50), a ** 0.5 * x + (1 - a) ** 0.5 * n)


@pytest.mark.parametrize("recipe", ["diffusion_policy", "act"])
def test_predict_chunk_with_a_prefix(recipe, ckpts):
    policy, _ = policy_from_checkpoint(ckpt_path=ckpts[recipe])
    window = {k: np.random.default_rng(0).standard_normal((1, 2 if recipe == "diffusion_policy" else 1, *s))
              .astype(np.float32) for k, s in policy.policy.obs_shapes.items()}
    prefix = np.array([[[0.3, -0.2], [0.1, 0.4]]], np.float32)
    if recipe == "act":
        with pytest.raises(ValueError, match="cannot inpaint"):
            policy.predict_chunk(window, batched_ob=True, prefix=prefix)
        return
    torch.manual_seed(1)
    free = policy.predict_chunk(window, batched_ob=True)
    torch.manual_seed(1)
    held = policy.predict_chunk(window, batched_ob=True, prefix=prefix)
    np.testing.assert_allclose(held[:, :2], prefix, atol=1e-5)  # un-normalized back to the actions given
    assert held.shape == free.shape and not np.allclose(held[:, 2:], free[:, 2:])  # the rest follows the prefix
    server = server_from_checkpoint(ckpts[recipe], port=0).start()
    try:
        remote = RemotePolicy(server.url)
        remote.start_episode(seed=1)
        assert np.array_equal(remote.predict_chunk(window, batched_ob=True, prefix=prefix), held)
        with pytest.raises(RemoteError, match="prefix"):
            remote.predict_chunk(window, batched_ob=True, prefix=np.zeros((1, 2, 5), np.float32))
        remote.close()
    finally:
        server.stop()


def test_malformed_chunk_requests_get_errors_and_the_session_goes_on(ckpts):
    from websockets.sync.client import connect

    from modmimic.wire import pack, unpack

    server = server_from_checkpoint(ckpts["diffusion_policy"], port=0).start()
    try:
        policy, _ = policy_from_checkpoint(ckpt_path=ckpts["diffusion_policy"])
        w = {k: np.zeros((2, *s), np.float32) for k, s in policy.policy.obs_shapes.items()}  # one window, To = 2
        k0 = sorted(w)[0]
        ok_prefix = np.zeros((3, 2), np.float32)
        bad = [{"obs": {k: v[0] for k, v in w.items()}},  # one observation, not a window
               {"obs": {**w, k0: np.zeros((3, 2), np.float32)}},  # wrong history length
               {"obs": w, "batched": True},  # batched needs [n, To, ...]
               {"obs": {k: np.zeros((2, *v.shape), np.float32) if k != k0 else np.zeros((3, *v.shape), np.float32)
                        for k, v in w.items()}, "batched": True},  # different n per key
               {"obs": {k: np.zeros((2000, *v.shape), np.float32) for k, v in w.items()}, "batched": True},
               {"obs": {**w, k0: np.full((2, 2), np.inf, np.float32)}},
               {"obs": w, "prefix": "actions"}, {"obs": w, "prefix": np.zeros((3, 2), np.int64)},
               {"obs": w, "prefix": np.zeros((3, 5), np.float32)}, {"obs": w, "prefix": np.zeros((0, 2), np.float32)},
               {"obs": w, "prefix": np.zeros((65, 2), np.float32)}, {"obs": w, "prefix": ok_prefix[None]},
               {"obs": w, "prefix": np.full((3, 2), np.nan, np.float32)},
               {"obs": w, "prefix": np.zeros((9, 2), np.float32)}]  # longer than the chunk: the policy refuses
        with connect(server.url, max_size=None) as ws:
            for m in bad:
                ws.send(pack({"op": "chunk", **m}))
                reply = unpack(ws.recv(timeout=30))
                assert not reply["ok"] and 0 < len(reply["error"]) < 600, m
            ws.send(pack({"op": "chunk", "obs": w, "prefix": ok_prefix}))
            reply = unpack(ws.recv(timeout=30))
            assert reply["ok"] and reply["chunk"].shape == (7, 2)
            np.testing.assert_allclose(reply["chunk"][:3], ok_prefix, atol=1e-5)
    finally:
        server.stop()
