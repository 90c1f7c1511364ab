"""``python -m modmimic.serve`` and ``modmimic.client.RemotePolicy``: actions through the server equal the in-process
policy bit for bit (BC-RNN hidden state over 25 steps, Diffusion Policy with the same seed, ACT with temporal
ensembling) while another session interleaves its own calls; tokens; 200+ malformed messages answered with errors
while the server keeps serving; sessions freed on disconnect; ``modmimic.eval server=``; the client imports no torch."""
import os
import resource
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import torch

from deploy_ckpts import train_checkpoint
from modmimic.client import RemoteError, RemotePolicy
from modmimic.eval import ArgumentError, evaluate
from modmimic.policy import policy_from_checkpoint
from modmimic.serve import PolicyServer, main as serve_main, server_from_checkpoint
from modmimic.wire import pack, unpack

STEPS = 25


@pytest.fixture(scope="module")
def ckpts(reach_hdf5, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {r: train_checkpoint(d / f"{r}.pth", reach_hdf5, r) for r in ("bc_rnn", "diffusion_policy", "act")}


@pytest.fixture
def serve():
    servers = []

    def start(ckpt, **kw):
        s = server_from_checkpoint(ckpt, port=0, **kw).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def episode_obs(policy, seed, n=STEPS, num_envs=None):
    rng = np.random.default_rng(seed)
    lead = () if num_envs is None else (num_envs,)
    return [{k: rng.standard_normal((*lead, *s)).astype(np.float32) for k, s in policy.policy.obs_shapes.items()}
            for _ in range(n)]


def in_process(ckpt, obs, seed, num_envs=None):
    policy, _ = policy_from_checkpoint(ckpt_path=ckpt)
    torch.manual_seed(seed)
    policy.start_episode(num_envs or 1)
    return [policy(o, batched_ob=num_envs is not None) for o in obs]


def wait_for(cond, timeout=5.0):
    t = time.time()
    while not cond() and time.time() - t < timeout:
        time.sleep(0.02)
    return cond()


@pytest.mark.parametrize("recipe", ["bc_rnn", "diffusion_policy", "act"])
def test_served_actions_equal_in_process_bit_for_bit_with_two_sessions(recipe, ckpts, serve):
    server = serve(ckpts[recipe])
    probe, _ = policy_from_checkpoint(ckpt_path=ckpts[recipe])
    obs_a, obs_b = episode_obs(probe, 0), episode_obs(probe, 1, num_envs=3)
    want_a, want_b = in_process(ckpts[recipe], obs_a, 11), in_process(ckpts[recipe], obs_b, 22, num_envs=3)
    a, b = RemotePolicy(server.url), RemotePolicy(server.url)
    a.start_episode(seed=11)
    b.start_episode(3, seed=22)
    got_a, got_b = [], []
    for oa, ob in zip(obs_a, obs_b):  # interleaved: each session keeps its own hidden state, queue and RNG
        got_a.append(a(oa))
        got_b.append(b(ob, batched_ob=True))
    assert len(server.sessions) == 2
    for want, got in ((want_a, got_a), (want_b, got_b)):
        assert all(w.dtype == g.dtype and np.array_equal(w, g) for w, g in zip(want, got)), recipe
    assert len({g.tobytes() for g in got_a}) > 1  # the actions change over the episode
    m = a.metadata
    assert m["recipe"] == recipe and m["action_dim"] == 2 and m["obs_keys"] == ["goal_pos", "pos", "vel"]
    assert m["chunk_size"] == {"bc_rnn": 1, "diffusion_policy": 4, "act": 4}[recipe]
    assert m["obs_dtypes"] == {"goal_pos": "float32", "pos": "float32", "vel": "float32"}
    assert len(m["checkpoint_sha256"]) == 64
    # reset starts a new episode: the same seed and observations give the same actions again
    a.start_episode(seed=11)
    assert all(np.array_equal(w, a(o)) for w, o in zip(want_a[:6], obs_a[:6]))
    a.close()
    b.close()
    assert wait_for(lambda: not server.sessions)


def test_tokens(ckpts, serve, tmp_path, capsys):
    server = serve(ckpts["bc_rnn"], token="s3cret")
    with pytest.raises(RemoteError, match="401"):
        RemotePolicy(server.url)
    with pytest.raises(RemoteError, match="wrong token"):
        RemotePolicy(server.url, token="guess")
    with RemotePolicy(server.url.replace("ws://", ""), token="s3cret") as p:
        p.start_episode()
        assert p({k: np.zeros(s, np.float32) for k, s in p.policy.obs_shapes.items()}).shape == (2,)
    # anything but loopback needs a token: refused before the checkpoint is even read
    with pytest.raises(ArgumentError, match="needs a token"):
        server_from_checkpoint(ckpts["bc_rnn"], host="0.0.0.0", port=0)
    env = {k: v for k, v in os.environ.items() if k != "MODMIMIC_SERVE_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "modmimic.serve", f"checkpoint={ckpts['bc_rnn']}", "host=0.0.0.0"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "needs a token" in r.stderr
    empty = tmp_path / "token"
    empty.write_text("\n")
    assert serve_main([f"checkpoint={ckpts['bc_rnn']}", "host=0.0.0.0", f"token_file={empty}"]) == 2
    assert "is empty" in capsys.readouterr().err


def malformed(shapes, rng):
    """>= 200 requests a broken or hostile client might send, each of which must get an error reply."""
    good = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    k0 = sorted(shapes)[0]
    nd = pack({"x": good[k0]})[1:]  # noqa: F841
    msgs = [b"", b"\x00", b"\xc1", b"garbage", b"\xff" * 64, "text frame", pack([1, 2, 3]), pack("act"), pack(7),
            msgpack.packb({"op": "act", "obs": msgpack.ExtType(1, b"os.system('x')")}),
            msgpack.packb({1: "int key"}), pack({"op": "metadata"})[:-3] + b"\x00",
            pack({"op": "exec", "code": "import os"}), pack({"op": None}), pack({}),
            pack({"op": "reset", "num_envs": 0}), pack({"op": "reset", "num_envs": 10 ** 9}),
            pack({"op": "reset", "num_envs": "1"}), pack({"op": "reset", "seed": -1}),
            pack({"op": "reset", "seed": 1.5}), pack({"op": "reset", "done": np.ones(5, bool)}),
            pack({"op": "act"}), pack({"op": "act", "obs": []}), pack({"op": "act", "obs": good, "batched": "yes"}),
            pack({"op": "act", "obs": {k: v for k, v in good.items() if k != k0}}),
            pack({"op": "act", "obs": {**good, k0: [0.0] * len(good[k0])}}),
            pack({"op": "act", "obs": {**good, k0: np.zeros(10 ** 6, np.float32)}}),  # oversized array (4 MB)
            pack({"op": "act", "obs": {**good, k0: np.full(good[k0].shape, np.nan, np.float32)}}),
            pack({"op": "act", "obs": {**good, k0: np.full(good[k0].shape, np.inf)}}),
            pack({"op": "act", "obs": {**good, k0: np.zeros(good[k0].shape, bool)}}),
            pack({"op": "act", "obs": good, "batched": True})]  # batched needs [num_envs, ...]
    for dtype in ("|O", "<U4", "<c8", "V8", "object", "<M8[s]", "float32", 5):
        msgs.append(pack({"op": "act", "obs": {**good, k0: {"__ndarray__": 1, "dtype": dtype, "shape": [3],
                                                            "data": b"\x00" * 12}}}))
    for shape in ([-1], [2, 2], "3", [1.5], [1] * 20, [10 ** 12, 10 ** 12], [True, 1, 1]):
        msgs.append(pack({"op": "act", "obs": {**good, k0: {"__ndarray__": 1, "dtype": "<f4", "shape": shape,
                                                            "data": b"\x00" * 12}}}))
    base = pack({"op": "act", "obs": good})
    while len(msgs) < 230:  # random truncations and byte flips of a valid request
        b = bytearray(base)
        if rng.random() < 0.5:
            b = b[: int(rng.integers(1, len(b) - 1))]
        else:
            for i in rng.integers(0, len(b), 4):
                b[i] = int(rng.integers(0, 256))
        msgs.append(bytes(b))
    return msgs


def test_fuzz_malformed_messages_get_errors_and_the_server_keeps_serving(ckpts, serve):
    from websockets.sync.client import connect

    server = serve(ckpts["bc_rnn"], max_message_bytes=8 << 20)
    probe, _ = policy_from_checkpoint(ckpt_path=ckpts["bc_rnn"])
    obs = episode_obs(probe, 0)
    want = in_process(ckpts["bc_rnn"], obs, 3)
    good = RemotePolicy(server.url)  # a well-behaved session open through the whole attack
    good.start_episode(seed=3)
    got = [good(obs[0])]
    msgs = malformed(probe.policy.obs_shapes, np.random.default_rng(0))
    errors = 0
    with connect(server.url, max_size=None) as ws:
        for i, m in enumerate(msgs):
            ws.send(m)
            reply = unpack(ws.recv(timeout=10))
            if not reply["ok"]:
                errors += 1
                assert isinstance(reply["error"], str) and 0 < len(reply["error"]) < 600
            if i % 25 == 0:
                got.append(good(obs[len(got)]))
    # every one of them is an error (some random flips only change a float value: those may act)
    assert errors >= 200 and len(msgs) >= 200
    assert server.errors >= errors
    # a frame over max_message_bytes closes that connection (1009), nobody else's
    with connect(server.url, max_size=None) as ws:
        ws.send(b"\x00" * (9 << 20))
        with pytest.raises(Exception):
            ws.recv(timeout=10)
    while len(got) < len(obs):
        got.append(good(obs[len(got)]))
    assert all(np.array_equal(w, g) for w, g in zip(want, got))
    good.close()
    with RemotePolicy(server.url) as fresh:  # and a new session works normally
        fresh.start_episode(seed=3)
        assert np.array_equal(fresh(obs[0]), want[0])
    assert wait_for(lambda: not server.sessions)


def test_disconnect_mid_episode_frees_the_session_and_cycles_do_not_leak(ckpts, serve):
    server = serve(ckpts["diffusion_policy"])
    probe, _ = policy_from_checkpoint(ckpt_path=ckpts["diffusion_policy"])
    obs = episode_obs(probe, 0, n=3)

    def cycle():
        p = RemotePolicy(server.url)
        p.start_episode(seed=1)
        for o in obs:
            p(o)
        p._ws.socket.close()  # drop the connection mid-episode, no close handshake

    for _ in range(10):
        cycle()
    assert wait_for(lambda: not server.sessions)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(100):
        cycle()
    assert wait_for(lambda: not server.sessions)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 20_000, f"peak RSS grew by {grown_kb} kB over 100 connect/disconnect cycles"


def test_eval_through_the_server_equals_in_process(ckpts, serve, tmp_path):
    server = serve(ckpts["diffusion_policy"])
    kw = dict(episodes=2, horizon=12, seed=5)
    here = evaluate(ckpts["diffusion_policy"], **kw)
    remote = evaluate(ckpts["diffusion_policy"], server=server.url, **kw)
    assert here["episodes"] == remote["episodes"]
    # another checkpoint than the served one is refused
    from modmimic.policy import CheckpointError

    with pytest.raises(CheckpointError, match="serves another checkpoint"):
        evaluate(ckpts["act"], server=server.url, **kw)
    r = subprocess.run([sys.executable, "-m", "modmimic.eval", f"checkpoint={ckpts['diffusion_policy']}",
                        f"server={server.url}", "episodes=2", "horizon=12", "seed=5", "quiet=true"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{here['Success_Rate']:.3f}" in r.stdout


def test_client_imports_without_torch():
    code = ("import sys, importlib.abc\n"
            "class B(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'tensordict', 'omegaconf', 'hydra'):\n"
            "            raise ImportError(name + ' blocked')\n"
            "sys.meta_path.insert(0, B())\n"
            "import modmimic.client\n"
            "print(sorted(m for m in sys.modules if m.startswith('modmimic')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['modmimic', 'modmimic.client', 'modmimic.wire']"


def test_policy_server_class_refuses_public_address_without_token(ckpts):
    policy, ckpt = policy_from_checkpoint(ckpt_path=ckpts["bc_rnn"])
    with pytest.raises(ArgumentError, match="needs a token"):
        PolicyServer(policy, ckpt, "0" * 64, host="192.168.1.10", port=0)


def test_wire_round_trip_and_refusals():
    from modmimic.wire import DTYPES, WireError

    for dt in sorted(DTYPES):
        a = (np.arange(12) % 2).astype(dt).reshape(3, 4)
        b = unpack(pack({"a": a, "n": [1, "x", None]}))
        assert b["a"].dtype == a.dtype and np.array_equal(a, b["a"]) and b["n"] == [1, "x", None]
    big_endian = np.arange(3, dtype=">f8")
    assert np.array_equal(unpack(pack({"a": big_endian}))["a"], big_endian)
    with pytest.raises(TypeError, match="cannot send"):
        pack({"a": np.array(["s"])})
    with pytest.raises(TypeError, match="cannot send"):
        pack({"a": object()})
    with pytest.raises(WireError, match="larger than the limit"):
        unpack(pack({"a": np.zeros(100)}), max_bytes=100)


def test_deploy_doc_snippets_run(ckpts, serve, tmp_path):
    """docs/deploy.md's Python examples run as written (paths, URL and token swapped for this test's)."""
    import importlib.util
    import re
    from pathlib import Path

    from modmimic.export import main as export_main

    doc = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    inproc, remote, onnx, robot_loop = re.findall(r"^```python\n(.*?)^```$", doc, flags=re.S | re.M)
    ckpt = ckpts["diffusion_policy"]
    ns = {}
    exec(inproc.replace("runs/test/<run>/models/last.pth", ckpt), ns)
    assert ns["action"].shape == (2,) and ns["actions"].shape == (1, 2)
    server = serve(ckpt, token="tok")
    exec(remote.replace('"gpu-box:8765"', repr(server.url)).replace('open("/etc/robot/token").read().strip()',
                                                                     '"tok"'), ns)
    assert ns["action"].shape == (2,)

    class Robot:  # the asynchronous control loop of section 5, for 12 ticks at 100 Hz
        def __init__(self):
            self.actions, self.rng = [], np.random.default_rng(0)

        def observe(self):
            time.sleep(0.01)
            return {k: self.rng.standard_normal(s).astype(np.float32) for k, s in
                    {"pos": (2,), "goal_pos": (2,), "vel": (2,)}.items()}

        def apply(self, a):
            self.actions.append(a)

    class Ticks:
        def __init__(self, n):
            self.n = n

        def __bool__(self):
            self.n -= 1
            return self.n >= 0

    loop_ns = {"robot": Robot(), "running": Ticks(12)}
    exec(robot_loop.replace('"gpu-box:8765"', repr(server.url)).replace("token=...", 'token="tok"'), loop_ns)
    acts = loop_ns["robot"].actions
    assert len(acts) == 12 and all(a.shape == (2,) for a in acts) and loop_ns["policy"].requests >= 1
    loop_ns["policy"].close()
    loop_ns["remote"].close()
    if all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript")):
        assert export_main([f"checkpoint={ckpt}", "format=onnx", f"out={tmp_path}"]) == 0
        exec(onnx.replace('"export/', f'"{tmp_path}/'), ns)
        assert ns["outputs"][0].shape == (1, 4, 2)
