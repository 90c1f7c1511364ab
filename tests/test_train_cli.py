"""``python -m modmimic.train`` end to end in subprocesses: run directory contents, logs, checkpoints loadable as
policies, CLI resume equal to an uninterrupted run, SIGKILL during a checkpoint write, sweeps, bad input."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from modmimic.config import compose, list_recipes
from modmimic.policy import load_checkpoint, policy_from_checkpoint
from modmimic.train import main
from modmimic.trainer import train

TINY = ["train.num_epochs=2", "experiment.epoch_every_n_steps=5", "train.batch_size=8",
        "algo.actor_layer_dims=[32]", "algo.rnn.hidden_dim=16", "algo.rnn.num_layers=1",
        "observation.modalities.obs.low_dim=[pos,goal_pos,vel]", "experiment.rollout.enabled=false"]
VALID = ["experiment.validate=true", "train.hdf5_filter_key=train", "train.hdf5_validation_filter_key=valid",
         "experiment.validation_epoch_every_n_steps=2"]


def cli(args, cwd, env=None, **kw):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "modmimic.train", *args], cwd=cwd, env=e, capture_output=True,
                          text=True, timeout=300, **kw)


def runs(root):
    """Run directories under ``root/<name>/``."""
    out = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if name == "multirun":
            continue
        out += [os.path.join(root, name, r) for r in sorted(os.listdir(os.path.join(root, name)))]
    return out


def snapshot(root):
    """``{relative path: sha1}`` of every file below ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = hashlib.sha1(open(p, "rb").read()).hexdigest()
    return out


def check_policy(path, recipe):
    """The checkpoint loads as a policy that acts on an observation of its keys and shapes."""
    policy, ckpt = policy_from_checkpoint(ckpt_path=path)
    assert ckpt["recipe_name"] == recipe
    policy.start_episode()
    ob = {k: np.full(tuple(shape), 0.25) for k, shape in policy.policy.obs_shapes.items()}
    a = policy(ob)
    assert a.shape == (int(policy.policy.ac_dim),) and np.isfinite(a).all()
    return ckpt


@pytest.fixture(scope="module")
def bc_run(reach_hdf5, tmp_path_factory):
    """One BC run from the command line, in a fresh working directory with a relative dataset path."""
    cwd = tmp_path_factory.mktemp("cwd")
    os.symlink(reach_hdf5, cwd / "demos.hdf5")
    r = cli(["recipe=bc", "dataset=demos.hdf5", "train.output_dir=out", "experiment.save.every_n_epochs=1", *TINY,
             *VALID], cwd)
    assert r.returncode == 0, r.stderr
    return cwd, r


def test_bc_end_to_end(bc_run):
    cwd, r = bc_run
    assert sorted(os.listdir(cwd)) == ["demos.hdf5", "out"]  # no hydra litter, paths relative to the cwd
    (run_dir,) = runs(cwd / "out")
    assert os.path.dirname(run_dir) == str(cwd / "out" / "test")
    cfg = OmegaConf.load(os.path.join(run_dir, "config.yaml"))
    assert "${" not in open(os.path.join(run_dir, "config.yaml")).read()  # resolved
    assert cfg.recipe_name == "bc" and cfg.train.data == str(cwd / "demos.hdf5") and cfg.train.num_epochs == 2
    recs = [json.loads(x) for x in open(os.path.join(run_dir, "logs", "metrics.jsonl"))]
    assert [x["epoch"] for x in recs] == [1, 2]
    for x in recs:
        assert np.isfinite(x["Train/Loss"]) and np.isfinite(x["Valid/Loss"]) and "Optimizer/policy0_lr" in x
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run_dir, "logs", "tb")))
    assert open(os.path.join(run_dir, "logs", "curves.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "epoch 2/2" in open(os.path.join(run_dir, "logs", "log.txt")).read()
    models = sorted(os.listdir(os.path.join(run_dir, "models")))
    assert {"last.pth", "best_validation.pth", "model_epoch_1.pth", "model_epoch_2.pth"} <= set(models)
    assert not [m for m in models if m.endswith(".tmp")]
    ckpt = check_policy(os.path.join(run_dir, "models", "last.pth"), "bc")
    assert ckpt["variable_state"]["epoch"] == 2 and ckpt["variable_state"]["global_step"] == 10
    check_policy(os.path.join(run_dir, "models", "best_validation.pth"), "bc")
    assert "epoch 1/2" in r.stdout and "epoch 2/2" in r.stdout


def test_bc_rnn_end_to_end_and_resume_equals_uninterrupted(reach_hdf5, tmp_path):
    """bc_rnn: 2 epochs + `resume=true train.num_epochs=4` on the command line == 4 epochs (trained in-process
    from the same overrides), parameters and optimizer state bit for bit."""
    args = ["recipe=bc_rnn", f"dataset={reach_hdf5}", "train.seq_length=5", "algo.rnn.horizon=5", *TINY, *VALID]
    full_cfg = compose("bc_rnn", [a.replace("dataset=", "train.data=") for a in args[1:]]
                       + [f"train.output_dir={tmp_path / 'full'}", "train.num_epochs=4"])
    train(full_cfg, progress=False)
    r2 = cli([*args, "train.output_dir=part"], tmp_path)
    assert r2.returncode == 0, r2.stderr
    (part_dir,) = runs(tmp_path / "part")
    assert load_checkpoint(os.path.join(part_dir, "models", "last.pth"))["variable_state"]["epoch"] == 2
    rr = cli(["resume=true", "train.output_dir=part", "train.num_epochs=4"], tmp_path)
    assert rr.returncode == 0, rr.stderr
    assert "resuming at epoch 3" in rr.stdout
    assert runs(tmp_path / "part") == [part_dir]  # continued in place
    (full_dir,) = runs(tmp_path / "full")
    a = check_policy(os.path.join(full_dir, "models", "last.pth"), "bc_rnn")
    b = check_policy(os.path.join(part_dir, "models", "last.pth"), "bc_rnn")
    assert a["variable_state"] == b["variable_state"] and b["variable_state"]["epoch"] == 4
    for k, v in a["model"]["nets"].items():
        assert torch.equal(v, b["model"]["nets"][k]), k
    sa, sb = a["model"]["optimizers"]["policy"], b["model"]["optimizers"]["policy"]
    assert sa["param_groups"] == sb["param_groups"]
    for i, st in sa["state"].items():
        for k, v in st.items():
            assert torch.equal(v, sb["state"][i][k]), (i, k)
    recs = [json.loads(x) for x in open(os.path.join(part_dir, "logs", "metrics.jsonl"))]
    assert [x["epoch"] for x in recs] == [1, 2, 3, 4]


def test_default_dataset_main_job(tmp_path):
    """No dataset=: the embedded default dataset and its observation keys."""
    r = cli(["recipe=bc_rnn", "train.output_dir=o", "train.num_epochs=1", "experiment.epoch_every_n_steps=2",
             "algo.rnn.hidden_dim=16", "algo.actor_layer_dims=[16]", "train.batch_size=4",
             # rollouts happen at the last epoch (experiment.rollout.at_end): two short episodes, no video
             "experiment.rollout.n=2", "experiment.rollout.horizon=5", "experiment.render_video=false"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "lift.hdf5" in r.stdout
    assert "rollouts: 2 episodes in Lift (horizon 5) at epoch 1" in r.stdout and "Lift success 0.000" in r.stdout
    (run_dir,) = runs(tmp_path / "o")
    ckpt = check_policy(os.path.join(run_dir, "models", "last.pth"), "bc_rnn")
    assert ckpt["env_metadata"]["env_name"] == "Lift"
    policy, _ = policy_from_checkpoint(ckpt_dict=ckpt)
    assert sorted(policy.policy.obs_shapes) == sorted(["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos",
                                                       "object"]) and policy.policy.ac_dim == 7


def test_help_lists_recipes(tmp_path):
    r = cli(["--help"], tmp_path)
    assert r.returncode == 0
    for name in list_recipes():
        assert f"  {name} " in r.stdout
    assert "dataset=" in r.stdout and "resume=true" in r.stdout
    assert os.listdir(tmp_path) == []



def kill_when(p: subprocess.Popen, ready, delay: float, timeout: float = 300) -> bool:
    """SIGKILL ``p`` ``delay`` seconds after ``ready()`` first holds (polled every 50 ms); whether it was killed.
    ``timeout`` is generous: a loaded 2-core CI machine once took more than 120 s to reach a tiny run's 2nd epoch."""
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and p.poll() is None:
            if ready():
                time.sleep(delay)
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=30)
                return True
            time.sleep(0.05)
        p.wait(timeout=30)
        return False
    finally:
        if p.poll() is None:
            p.kill()


def test_sigkill_during_checkpoint_write_keeps_last_loadable(reach_hdf5, tmp_path):
    """Kill the process while it writes the second last.pth: the first one is intact, and the run resumes."""
    args = ["recipe=bc", f"dataset={reach_hdf5}", "train.output_dir=o", *TINY, "train.num_epochs=5",
            "experiment.logging.log_tb=false"]
    p = subprocess.Popen([sys.executable, "-m", "modmimic.train", *args], cwd=tmp_path,
                         env=dict(os.environ, MODMIMIC_TEST_SLOW_SAVE="3"), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)

    def writing_second_last_pth():
        rd = runs(tmp_path / "o")
        names = os.listdir(os.path.join(rd[0], "models")) if rd and os.path.isdir(os.path.join(rd[0], "models")) else []
        return "last.pth" in names and any(n.startswith(".last.pth.") and n.endswith(".tmp") for n in names)

    killed = kill_when(p, writing_second_last_pth, 0.5)  # well inside the 3-second write
    assert killed and p.returncode == -signal.SIGKILL
    (run_dir,) = runs(tmp_path / "o")
    models = os.path.join(run_dir, "models")
    assert [n for n in os.listdir(models) if n.endswith(".tmp")]  # the interrupted write
    ckpt = check_policy(os.path.join(models, "last.pth"), "bc")
    assert ckpt["variable_state"]["epoch"] == 1
    r = cli([f"resume_dir={run_dir}", "train.num_epochs=2"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert not [n for n in os.listdir(models) if n.endswith(".tmp")]
    assert load_checkpoint(os.path.join(models, "last.pth"))["variable_state"]["epoch"] == 2


def test_multirun_sweep(reach_hdf5, tmp_path):
    r = cli(["-m", "recipe=bc", f"dataset={reach_hdf5}", "train.output_dir=o", *TINY, "train.num_epochs=1",
             "train.seed=0,1"], tmp_path)
    assert r.returncode == 0, r.stderr
    dirs = runs(tmp_path / "o")
    assert len(dirs) == 2
    seeds = sorted(OmegaConf.load(os.path.join(d, "config.yaml")).train.seed for d in dirs)
    assert seeds == [0, 1]
    assert sorted(os.listdir(tmp_path)) == ["o"]
    assert os.listdir(tmp_path / "o" / "multirun")  # hydra's sweep record lives under the output dir


def test_training_divergence_exits_nonzero(reach_hdf5, tmp_path):
    r = cli(["recipe=bc", f"dataset={reach_hdf5}", "train.output_dir=o", *TINY, "train.num_epochs=4",
             "algo.optim_params.policy.learning_rate.epoch_schedule=[1]",
             "algo.optim_params.policy.learning_rate.decay_factor=1e38"], tmp_path)
    assert r.returncode == 1
    assert "training diverged" in r.stderr and "loss 'bc'" in r.stderr and "last good checkpoint" in r.stderr
    assert "Traceback" not in r.stderr
    (run_dir,) = runs(tmp_path / "o")
    assert check_policy(os.path.join(run_dir, "models", "last.pth"), "bc")["variable_state"]["epoch"] == 1


@pytest.mark.parametrize("args, expected", [
    (["recipe=bc_rnnn"], ["unknown recipe 'bc_rnnn'", "did you mean 'bc_rnn'"]),
    (["train.bacth_size=8"], ["unknown config key 'train.bacth_size'", "did you mean 'train.batch_size'"]),
    (["train.num_epochs=abc"], ["train.num_epochs", "int"]),
    (["experiment.validate=maybe"], ["experiment.validate", "bool"]),
    (["dataset=missing.hdf5"], ["dataset file not found", "missing.hdf5"]),
    (["train.hdf5_filter_key=nokey"], ["filter key 'nokey'", "available: ['train', 'valid']"]),
    (["resume=true", "train.output_dir=nowhere"], ["no run to resume"]),
])
def test_bad_input(args, expected, bc_run, reach_hdf5, capsys, monkeypatch):
    """Non-zero exit, a message naming the problem, and the earlier run's directory untouched."""
    cwd, _ = bc_run
    monkeypatch.chdir(cwd)
    before = snapshot(cwd)
    has_data = any(a.startswith("dataset=") for a in args)
    code = main([*([] if has_data else [f"dataset={reach_hdf5}"]), "train.output_dir=out", *TINY, *args])
    err = capsys.readouterr().err
    assert code == 2, err
    for e in expected:
        assert e in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert snapshot(cwd) == before


def test_bad_input_exit_status_from_the_shell(tmp_path):
    r = cli(["train.num_epohcs=3"], tmp_path)
    assert r.returncode == 2
    assert "did you mean 'train.num_epochs'" in r.stderr
    assert os.listdir(tmp_path) == []


def memmap_listing(root):
    return {sub: sorted(n for n in os.listdir(os.path.join(root, sub)) if not n.startswith(".store-"))
            for sub in sorted(os.listdir(root))} if os.path.isdir(root) else {}


@pytest.mark.slow
def test_memmap_build_sigkill_then_rerun_resume_and_sweep_reuse(reach_hdf5, tmp_path):
    """SIGKILL in the middle of the memory-mapped store's build leaves no store that looks finished; the same
    command then builds it, and a resume and both jobs of a sweep reuse it (no 'already exists')."""
    args = ["recipe=bc", f"dataset={reach_hdf5}", "train.output_dir=o", *TINY, "train.num_epochs=1",
            "experiment.logging.log_tb=false", "train.hdf5_memmap_dir=mm"]
    p = subprocess.Popen([sys.executable, "-m", "modmimic.train", *args], cwd=tmp_path,
                         env=dict(os.environ, MODMIMIC_TEST_SLOW_MEMMAP="0.5"), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    killed = kill_when(p, lambda: any(n.startswith(".build-") for n in memmap_listing(tmp_path / "mm").get("train", [])),
                       1.0)  # a few demos into the 12 x 0.5 s build
    assert killed and p.returncode == -signal.SIGKILL
    (left,) = memmap_listing(tmp_path / "mm")["train"]
    assert left.startswith(".build-")  # the interrupted build, never renamed into place
    r = cli(args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "built the memory-mapped episode store" in r.stdout
    (store,) = memmap_listing(tmp_path / "mm")["train"]
    assert store.startswith("store-")
    flat = tmp_path / "mm" / "train" / store / "flat.memmap"
    stamp = os.stat(flat).st_mtime_ns
    r = cli(["resume=true", "train.output_dir=o", "train.num_epochs=2"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "reusing the memory-mapped episode store" in r.stdout
    (run_dir,) = runs(tmp_path / "o")
    assert load_checkpoint(os.path.join(run_dir, "models", "last.pth"))["variable_state"]["epoch"] == 2
    r = cli(["-m", *args, "train.seed=0,1"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("reusing the memory-mapped episode store") == 2
    assert memmap_listing(tmp_path / "mm")["train"] == [store] and os.stat(flat).st_mtime_ns == stamp


def test_resume_without_checkpoint_starts_from_scratch(reach_hdf5, tmp_path, capsys, monkeypatch):
    """A run that died before its first checkpoint (config.yaml, no models/last.pth): resume=true says so and
    starts it again, with its config and the new overrides, in a new run directory."""
    from modmimic.config import save_config_yaml
    from modmimic.dataset import with_data
    from modmimic.logger import make_run_dir

    monkeypatch.chdir(tmp_path)
    cfg = with_data(compose("bc", [f"train.data={reach_hdf5}", "train.output_dir=o", *TINY, "train.seed=7",
                                   "experiment.logging.log_tb=false"]))
    dead = make_run_dir(cfg)  # what train() has done when epoch 1 starts
    save_config_yaml(cfg, os.path.join(dead, "config.yaml"))
    assert main(["resume=true", "train.output_dir=o", "train.num_epochs=1"]) == 0
    err = capsys.readouterr().err
    assert f"{dead} has no checkpoint" in err and "starting it from scratch" in err
    (new,) = [d for d in runs(tmp_path / "o") if d != dead]
    ckpt = load_checkpoint(os.path.join(new, "models", "last.pth"))
    assert ckpt["variable_state"]["epoch"] == 1 and ckpt["config"]["train"]["seed"] == 7
    # nothing at all to resume is still an error
    assert main(["resume=true", "train.output_dir=elsewhere"]) == 2
    assert "no run to resume" in capsys.readouterr().err


def test_paths_hydra_cannot_lex_work_unquoted(reach_hdf5, tmp_path, capsys, monkeypatch):
    """Non-ASCII letters, spaces, parentheses and '=' in a dataset path: quoted for hydra automatically; other
    unparsable values get a message that shows the quoting."""
    odd = tmp_path / "données (copie)=1 é.hdf5"
    shutil.copy(reach_hdf5, odd)
    monkeypatch.chdir(tmp_path)
    assert main([f"dataset={odd}", "train.output_dir=o", *TINY, "train.num_epochs=1",
                 "experiment.logging.log_tb=false"]) == 0
    assert str(odd) in capsys.readouterr().out
    assert main([f"dataset={odd}", "experiment.name=café"]) == 2
    err = capsys.readouterr().err
    assert "key='value'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("make, args, expected", [
    (lambda d: (d / "f").write_text("x"), ["train.output_dir=f"], "train.output_dir="),
    (lambda d: (d / "f").write_text("x"), ["train.hdf5_memmap_dir=f/mm"], "train.hdf5_memmap_dir="),
    (lambda d: (d / "dd").mkdir(), ["dataset=dd"], "is a directory"),
    (lambda d: None, ["train.batch_size=100000000"], "train.batch_size=100000000 needs about"),
    (lambda d: None, ["experiment.epoch_every_n_steps=0"], "experiment.epoch_every_n_steps must be"),
    (lambda d: None, ["algo.optim_params.policy.learning_rate.initial=-1"],
     "algo.optim_params.policy.learning_rate.initial must be a number >= 0"),
])
def test_bad_paths_and_values_exit_2_before_training(make, args, expected, reach_hdf5, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    before = snapshot(tmp_path)
    has_data = any(a.startswith("dataset=") for a in args)
    code = main([*([] if has_data else [f"dataset={reach_hdf5}"]), *TINY, "experiment.logging.log_tb=false", *args])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path) == before and not os.path.exists(tmp_path / "runs")
