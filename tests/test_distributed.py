"""Data-parallel training (modmimic/distributed.py) with 2 CPU processes over gloo on 127.0.0.1.

The ranks' batches are disjoint slices of one global batch, so after k steps the parameters must be identical on
both ranks and equal (<= 1e-6) to ONE process training on the union batch (the same config): BC, IQL (three updates,
a target), CQL (log-alpha and Lagrange weight are Scalar networks) and HBC. Also: resume of a 2-process run is
bit-exact, distributed evaluation plays the serial evaluation's episodes."""
import contextlib
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modmimic import distributed
from modmimic.algo import algo_factory
from modmimic.config import all_obs_keys, compose
from modmimic.data.hdf5 import load_episode_store
from modmimic.data.sampler import WindowSampler

WORLD = 2
STEPS = 3
BATCH = 8  # the global batch; 4 windows per rank


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, fn, args, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = fn(distributed.setup(torch.device("cpu")), *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def spawn(fn, args, tmp_path, world=WORLD) -> list:
    """``fn(group, *args)`` on ``world`` processes; their return values (tensors and plain containers)."""
    out = tmp_path / f"spawn_{free_port()}"
    out.mkdir()
    mp.spawn(_worker, args=(world, free_port(), fn, args, str(out)), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


# --- deterministic noise (CQL samples actions; a sample's noise must not depend on which batch it is in) -----------

def deterministic_noise():
    """Gaussian samples ``loc + 0.3 * scale`` and uniform fills with a fixed pattern over all but the first (batch)
    dimension: the union batch then sees each sample's noise exactly as the rank that owns it."""
    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        return self.loc.expand(shape) + 0.3 * self.scale.expand(shape)

    def uniform_(self, a=0.0, b=1.0, generator=None):
        if self.dim() < 2:
            return self.fill_((a + b) / 2)
        n = self[0].numel()
        return self.copy_(torch.linspace(a, b, n, dtype=self.dtype).view(self.shape[1:]).expand_as(self))

    return {(torch.distributions.Normal, "rsample"): rsample, (torch.Tensor, "uniform_"): uniform_}


class patched_noise:
    """Context manager: :func:`deterministic_noise` in place (after the networks are initialised)."""

    def __enter__(self):
        self.saved = {k: getattr(*k) for k in deterministic_noise()}
        for (owner, name), fn in deterministic_noise().items():
            setattr(owner, name, fn)

    def __exit__(self, *exc):
        for (owner, name), fn in self.saved.items():
            setattr(owner, name, fn)


RECIPES = {"bc": [], "iql": [], "cql": [], "hbc": ["algo.planner.vae.enabled=false"]}


def train_steps(group, recipe, path, overrides, steps=STEPS):
    """``steps`` training steps of ``recipe`` (global batch ``BATCH``) on ``group``; returns the state dicts."""
    cfg = compose(recipe, [*overrides, f"train.batch_size={BATCH}"])
    store = load_episode_store(str(path), all_obs_keys(cfg), load_next_obs=True)
    sampler = WindowSampler(store, BATCH, seq_length=cfg.train.seq_length, frame_stack=cfg.train.frame_stack,
                            goal_mode=cfg.train.goal_mode, seed=0).shard(group.rank, group.world)
    torch.manual_seed(group.rank * 1000)  # different initial weights per rank: the broadcast must fix them
    algo = algo_factory(cfg.algo_name, cfg, store.obs_shapes(), store.ac_dim)
    distributed.attach(algo, group)
    algo.set_train()
    batches = []
    with patched_noise() if recipe == "cql" else contextlib.nullcontext():
        for _ in range(steps):
            batch = sampler.sample()
            batches.append(batch["index"][:, 0].clone())
            algo.train_on_batch(algo.process_batch_for_training(batch), epoch=1)
    return {"nets": {k: v.detach().clone() for k, v in algo.nets.state_dict().items()},
            "optim": {k: o.state_dict()["state"] for k, o in algo.optimizers.items()}, "windows": batches}


def _steps_and_grad_average(group, recipe, path, overrides):
    return {**train_steps(group, recipe, path, overrides), "grads": _grad_average(group)}


# one process start costs ~20-40 s on the shared 2-core CI machine: BC is fast, the rest slow
@pytest.mark.parametrize("recipe", [r if r == "bc" else pytest.param(r, marks=pytest.mark.slow) for r in RECIPES])
def test_two_ranks_equal_one_process_on_the_union_batch(recipe, reach_hdf5, tmp_path, tiny):
    overrides = [*tiny(recipe), *RECIPES[recipe]]
    r0, r1 = spawn(_steps_and_grad_average, (recipe, reach_hdf5, overrides), tmp_path)
    for r in (r0, r1):  # gradient averaging itself: missing gradients count as zero, none anywhere stays None
        assert torch.equal(r["grads"]["a"], torch.full((3,), 1.5))  # (1 + 2) / 2
        assert torch.equal(r["grads"]["b"], torch.full((3,), 2.0))  # (0 + 4) / 2
        assert r["grads"]["none"]
    one = train_steps(distributed.SINGLE, recipe, reach_hdf5, overrides)
    for w0, w1, w in zip(r0["windows"], r1["windows"], one["windows"]):  # disjoint slices of the same batch
        assert torch.equal(torch.cat([w0, w1]), w)
    assert one["nets"].keys() == r0["nets"].keys()
    for k, v in one["nets"].items():
        assert torch.equal(r0["nets"][k], r1["nets"][k]), f"{k} differs between the ranks"
        torch.testing.assert_close(r0["nets"][k], v, rtol=0, atol=1e-6, msg=k)
    assert one["optim"].keys() == r0["optim"].keys()
    if recipe == "cql":  # the scalar networks (entropy and Lagrange weights) were trained, identically
        for net in ("log_entropy_weight", "log_cql_weight"):
            assert float(one["nets"][f"{net}.value"]) != 0.0
            assert torch.equal(r0["nets"][f"{net}.value"], r1["nets"][f"{net}.value"])
    if recipe == "iql":  # the target network followed its (identical) source
        assert any(k.startswith("critic_target.") for k in one["nets"])


def _grad_average(group):
    """Rank r's gradients are (r + 1) * ones, one parameter has a gradient on rank 1 only, one on no rank."""
    a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    a.grad = torch.full((3,), float(group.rank + 1))
    if group.rank == 1:
        b.grad = torch.full((3,), 4.0)
    distributed.average_grads([a, b, c], group.world)
    return {"a": a.grad, "b": b.grad, "none": c.grad is None}


# --- the training loop on 2 processes --------------------------------------------------------------------------

def _train_runs(group, common):
    """The same config three times on this group: 4 epochs; 2 epochs (stopped); resumed to 4."""
    from modmimic.trainer import resume_config, train

    full = train(compose("bc", common + ["experiment.name=full"]), progress=False)
    part = train(compose("bc", common + ["experiment.name=part", "train.stop_after_epoch=2"]), progress=False)
    resumed = train(resume_config(part["run_dir"], ["train.stop_after_epoch=null"]), progress=False)
    return {"full": full["run_dir"], "part": part["run_dir"], "resumed": resumed["run_dir"],
            "epoch": resumed["epoch"], "rng": torch.get_rng_state()}


@pytest.mark.slow
def test_two_rank_training_resume_is_bit_exact_and_rank0_writes(reach_hdf5, tmp_path, tiny):
    from modmimic.policy import load_checkpoint
    from modmimic.trainer import train

    common = [f"train.data={reach_hdf5}", f"train.output_dir={tmp_path}", f"train.batch_size={BATCH}",
              "experiment.epoch_every_n_steps=3", "experiment.validate=true", "train.hdf5_filter_key=train",
              "train.hdf5_validation_filter_key=valid", "experiment.validation_epoch_every_n_steps=2",
              "experiment.logging.log_tb=false", "train.num_epochs=4", "algo.loss.l1_weight=0.5", *tiny("bc")]
    r0, r1 = spawn(_train_runs, (common,), tmp_path)
    assert r0["full"] == r1["full"] and r0["part"] == r1["part"] == r0["resumed"] and r0["epoch"] == 4
    assert len(os.listdir(tmp_path / "full")) == 1 and len(os.listdir(tmp_path / "part")) == 1  # one run dir each
    assert not torch.equal(r0["rng"], r1["rng"])  # each rank its own stream
    a = load_checkpoint(os.path.join(r0["full"], "models", "last.pth"))
    b = load_checkpoint(os.path.join(r0["resumed"], "models", "last.pth"))
    for k, v in a["model"]["nets"].items():
        assert torch.equal(v, b["model"]["nets"][k]), k
    assert a["trainer_state"]["world_size"] == 2
    for ra, rb in zip(a["trainer_state"]["rng_ranks"], b["trainer_state"]["rng_ranks"]):
        assert torch.equal(ra["torch"], rb["torch"])
    assert torch.equal(a["trainer_state"]["samplers"]["train"]["perm"], b["trainer_state"]["samplers"]["train"]["perm"])
    la = [json.loads(x) for x in open(os.path.join(r0["full"], "logs", "metrics.jsonl"))]
    lb = [json.loads(x) for x in open(os.path.join(r0["resumed"], "logs", "metrics.jsonl"))]
    assert [r["epoch"] for r in lb] == [1, 2, 3, 4]
    assert [r["Train/Loss"] for r in la] == [r["Train/Loss"] for r in lb]
    # one process on the same config (the global batch) learns the same weights and logs the same (mean) losses
    torch.set_num_threads(1)
    one = train(compose("bc", common + ["experiment.name=one"]), progress=False)
    c = load_checkpoint(os.path.join(one["run_dir"], "models", "last.pth"))
    for k, v in c["model"]["nets"].items():
        torch.testing.assert_close(a["model"]["nets"][k], v, rtol=0, atol=1e-6, msg=k)
    lc = [json.loads(x) for x in open(os.path.join(one["run_dir"], "logs", "metrics.jsonl"))]
    assert [r["Train/Loss"] for r in la] == pytest.approx([r["Train/Loss"] for r in lc], abs=1e-6)
    assert [r["Valid/Loss"] for r in la] == pytest.approx([r["Valid/Loss"] for r in lc], abs=1e-6)


def _train_with_batch(group, cfg_overrides):
    from modmimic.config import ConfigError
    from modmimic.trainer import train

    try:
        train(compose("bc", cfg_overrides), progress=False)
    except ConfigError as e:
        return {"error": str(e)}
    return {"error": ""}


@pytest.mark.slow
def test_batch_size_must_split_over_the_ranks(reach_hdf5, tmp_path, tiny):
    r0, r1 = spawn(_train_with_batch, ([f"train.data={reach_hdf5}", f"train.output_dir={tmp_path}",
                                        "train.batch_size=7", "train.num_epochs=1", *tiny("bc")],), tmp_path)
    assert "train.batch_size=7" in r0["error"] and "divisible by the number of processes (2)" in r0["error"]
    assert r0 == r1
    assert not (tmp_path / "test").exists()


# --- distributed evaluation -------------------------------------------------------------------------------------

def _evaluate(group, ckpt, episodes):
    from modmimic.eval import evaluate

    s = evaluate(ckpt, episodes=episodes, horizon=15, seed=5, group=group)
    return {"summary": {k: v for k, v in s.items() if isinstance(v, (int, float))}, "episodes": s["episodes"]}


@pytest.mark.slow
def test_distributed_evaluation_equals_serial(reach_hdf5, tmp_path, tiny):
    from modmimic.eval import evaluate
    from modmimic.trainer import train

    run = train(compose("bc", [f"train.data={reach_hdf5}", f"train.output_dir={tmp_path}", "train.batch_size=16",
                               "train.num_epochs=3", "experiment.epoch_every_n_steps=30", *tiny("bc")]),
                progress=False)
    ckpt = os.path.join(run["run_dir"], "models", "last.pth")
    serial = evaluate(ckpt, episodes=7, horizon=15, seed=5)
    r0, r1 = spawn(_evaluate, (ckpt, 7), tmp_path)
    assert r0["episodes"] == r1["episodes"] == serial["episodes"]
    assert [e["index"] for e in r0["episodes"]] == list(range(7))
    for k in ("Success_Rate", "Num_Success", "Return", "Horizon"):
        assert r0["summary"][k] == r1["summary"][k] == serial[k]


def test_episode_share_splits_by_index():
    g = distributed.Group(rank=1, world=3)
    assert distributed.episode_share(8, g) == [1, 4, 7]
    assert sorted(i for r in range(3) for i in distributed.episode_share(8, distributed.Group(rank=r, world=3))) \
        == list(range(8))


@pytest.mark.slow
def test_torchrun_cli_end_to_end(reach_hdf5, tmp_path, tiny):
    """``torchrun --nproc-per-node 2 -m modmimic.train``: exit 0, one run directory, rank 0's log only."""
    import subprocess
    import sys

    port = free_port()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "-m", "modmimic.train",
                        f"dataset={reach_hdf5}", f"train.output_dir={tmp_path}", "train.batch_size=8",
                        "train.num_epochs=2", "experiment.epoch_every_n_steps=3", "experiment.logging.log_tb=false",
                        *tiny("bc")], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = os.listdir(tmp_path / "test")
    log = (tmp_path / "test" / run / "logs" / "log.txt").read_text()
    assert log.count("epoch 2/2") == 1
    assert len((tmp_path / "test" / run / "logs" / "metrics.jsonl").read_text().splitlines()) == 2
