"""The GPU speed path: the low-dim store on the device (same windows as the host path), bf16 autocast
(``train.amp=bf16``, also checked on CPU, where autocast supports bfloat16), compile + CUDA graphs, the GPU benchmark.
Tests that need CUDA run wherever it exists and are skipped here."""
import subprocess
import sys

import pytest
import torch

from modmimic.algo import algo_factory
from modmimic.config import ConfigError, all_obs_keys, compose
from modmimic.data.hdf5 import load_episode_store
from modmimic.data.sampler import WindowSampler

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def sampler_pair(path, device, **kw):
    store = load_episode_store(str(path), ["pos", "goal_pos", "vel"], load_next_obs=True)
    host = WindowSampler(store, 8, seq_length=3, seed=4, device=device, **kw)
    dev = WindowSampler(store, 8, seq_length=3, seed=4, device=device, **kw).keep_on_device()
    return host, dev


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_store_on_device_gives_the_host_path_batches(reach_hdf5, device):
    host, dev = sampler_pair(reach_hdf5, device, goal_mode="last")
    for _ in range(5):  # several batches, across a permutation boundary
        a, b = host.sample(), dev.sample()
        assert b.device == torch.device(device) and dev._flat.device.type == torch.device(device).type
        for k in a.keys(True, True):
            assert torch.equal(a.get(k), b.get(k)), k
    state = dev.state_dict()
    assert state["perm"].device.type == "cpu"  # checkpoints stay plain host tensors
    host.load_state_dict(state)
    dev.load_state_dict(state)
    assert torch.equal(host.sample()["action"], dev.sample()["action"])


def test_shards_are_disjoint_slices_of_the_global_batch(reach_hdf5):
    store = load_episode_store(str(reach_hdf5), ["pos", "goal_pos", "vel"])
    whole = WindowSampler(store, 12, seed=1)
    parts = [WindowSampler(store, 12, seed=1).shard(r, 3) for r in range(3)]
    for _ in range(int(len(whole) / 12) + 2):
        w = whole.sample()["index"][:, 0]
        got = [p.sample()["index"][:, 0] for p in parts]
        assert all(len(g) == 4 for g in got)
        assert torch.equal(torch.cat(got), w)
    with pytest.raises(ValueError, match="not divisible"):
        WindowSampler(store, 10, seed=1).shard(0, 3)


def steps(recipe, path, tiny, *extra, n=3, device="cpu"):
    cfg = compose(recipe, [*tiny(recipe), "train.batch_size=8", *extra])
    store = load_episode_store(str(path), all_obs_keys(cfg), load_next_obs=True)
    sampler = WindowSampler(store, 8, seq_length=cfg.train.seq_length, seed=0, device=device)
    torch.manual_seed(0)
    algo = algo_factory(cfg.algo_name, cfg, store.obs_shapes(), store.ac_dim, device)
    algo.set_train()
    losses = [algo.log_info(algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1))["Loss"]
              for _ in range(n)]
    return losses, algo


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_bf16_autocast_trains_close_to_fp32(reach_hdf5, tiny, device):
    full, a = steps("iql", reach_hdf5, tiny, device=device)
    half, b = steps("iql", reach_hdf5, tiny, "train.amp=bf16", device=device)
    assert half != full  # autocast really ran the forward passes in bfloat16
    assert half == pytest.approx(full, rel=5e-2, abs=5e-3)
    assert all(p.dtype == torch.float32 for p in b.nets.parameters())  # master weights stay fp32
    with pytest.raises(ConfigError, match="train.amp must be null or bf16"):
        steps("bc", reach_hdf5, tiny, "train.amp=fp8", n=0)


def test_cuda_graphs_need_cuda(reach_hdf5, tiny):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="train.cuda_graphs=true needs device=cuda"):
        steps("bc", reach_hdf5, tiny, "train.compile=true", "train.cuda_graphs=true", n=0)


@cuda
@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["bc", "iql"])
def test_compiled_cuda_graph_step_equals_eager(recipe, reach_hdf5, tiny):
    torch._dynamo.reset()
    eager, a = steps(recipe, reach_hdf5, tiny, n=5, device="cuda")
    torch._dynamo.reset()
    graphs, b = steps(recipe, reach_hdf5, tiny, "train.compile=true", "train.cuda_graphs=true", n=5, device="cuda")
    assert graphs == pytest.approx(eager, rel=1e-3, abs=1e-4)
    for (k, p), q in zip(a.nets.state_dict().items(), b.nets.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4, msg=k)


def test_gpu_benchmark_says_no_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the benchmark would run")
    r = subprocess.run([sys.executable, "benchmarks/bench_gpu.py"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no CUDA" in r.stderr and r.stdout == ""


@cuda
@pytest.mark.slow
def test_gpu_benchmark_runs():
    r = subprocess.run([sys.executable, "benchmarks/bench_gpu.py", "--only", "bc", "--steps", "5", "--repeats", "2"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "compiled+graphs/bc" in r.stdout and "ratio_vs_torch" in r.stdout
