"""Files a user hands in are data, never code (issue "Trust", items 1-5 and 10).

A pickle payload in a checkpoint never runs, through every entry point that reads one (``policy_from_checkpoint``,
``python -m modmimic.eval``, ``resume=true`` on a replaced ``models/last.pth``, ``experiment.ckpt_path``); callables
named in a stored config resolve only inside modmimic; ``experiment.name`` cannot leave ``train.output_dir``;
``write_dataset=`` and ``split`` do not replace existing data without being told; files follow the umask; a
checkpoint that is incomplete or of another shape is a one-paragraph error with exit status 2."""
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from modmimic.config import ConfigError, compose
from modmimic.io import atomic_write_text
from modmimic.policy import (FORMAT, CheckpointError, load_checkpoint, policy_from_checkpoint, save_checkpoint)
from modmimic.rollout import RolloutError, check_policy_fits
from modmimic.trust import ENV_VAR, UntrustedNameError, resolve, stored_config_modules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def payload_checkpoint(path, marker, legacy=False):
    """A file that looks like a checkpoint and runs a shell command when unpickled."""
    obj = {"format": FORMAT, "format_version": 2, "algo_name": "bc", "config": {}, "evil": Payload(marker)}
    if legacy:  # a plain pickle (torch.load's legacy path)
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    else:
        torch.save(obj, path)
    return str(path)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def overrides(reach, out, tiny, *extra):
    return [f"train.data={reach}", f"train.output_dir={out}", "train.batch_size=8", "train.num_epochs=1",
            "experiment.epoch_every_n_steps=2", "experiment.logging.log_tb=false", *tiny("bc"), *extra]


@pytest.fixture(scope="module")
def run(reach_hdf5, tmp_path_factory):
    """A finished one-epoch bc run (written under umask 022)."""
    import sys as _sys

    _sys.path.insert(0, os.path.join(ROOT, "tests"))
    from conftest import tiny_overrides
    from modmimic.trainer import train

    out = tmp_path_factory.mktemp("runs")
    old = os.umask(0o022)
    try:
        r = train(compose("bc", overrides(reach_hdf5, out, tiny_overrides, "experiment.name=ok")), progress=False)
    finally:
        os.umask(old)
    return r["run_dir"]


@pytest.fixture
def last(run):
    return os.path.join(run, "models", "last.pth")


# --- 1. pickle payloads never run ---------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True])
def test_payload_refused_by_policy_from_checkpoint(tmp_path, legacy):
    marker = tmp_path / "pwned"
    bad = payload_checkpoint(tmp_path / "bad.pth", marker, legacy)
    before = sha(bad)
    with pytest.raises(CheckpointError, match="refused: it (contains pickled objects that would run code|is not a "
                                              "torch file of plain data)"):
        policy_from_checkpoint(ckpt_path=bad)
    assert not marker.exists() and sha(bad) == before


def test_payload_refused_by_eval_cli(tmp_path):
    marker = tmp_path / "pwned"
    bad = payload_checkpoint(tmp_path / "bad.pth", marker)
    r = subprocess.run([sys.executable, "-m", "modmimic.eval", f"checkpoint={bad}", "episodes=1"],
                       capture_output=True, text=True, env=ENV, cwd=str(tmp_path), timeout=600)
    assert r.returncode == 2, r.stderr
    assert "refused" in r.stderr and "system" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not marker.exists()


def test_payload_refused_on_resume(run, tmp_path):
    """A run directory whose models/last.pth was replaced: ``python -m modmimic.train resume=true``."""
    marker = tmp_path / "pwned"
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    payload_checkpoint(copy / "models" / "last.pth", marker)
    r = subprocess.run([sys.executable, "-m", "modmimic.train", "resume=true", f"resume_dir={copy}"],
                       capture_output=True, text=True, env=ENV, cwd=str(tmp_path), timeout=600)
    assert r.returncode == 2, r.stderr
    assert "checkpoint error" in r.stderr and "refused" in r.stderr, r.stderr
    assert not marker.exists()


def test_payload_refused_as_ckpt_path(reach_hdf5, tmp_path, tiny, capsys):
    from modmimic.train import main

    marker = tmp_path / "pwned"
    bad = payload_checkpoint(tmp_path / "bad.pth", marker)
    code = main(overrides(reach_hdf5, tmp_path / "out", tiny, f"experiment.ckpt_path={bad}"))
    assert code == 2 and "refused" in capsys.readouterr().err
    assert not marker.exists()


def test_old_format_is_refused_with_retrain(last, tmp_path):
    raw = torch.load(last, weights_only=True)
    raw["format_version"] = 1
    p = tmp_path / "v1.pth"
    torch.save(raw, p)
    with pytest.raises(CheckpointError, match="retrain"):
        load_checkpoint(str(p))


def test_checkpoint_round_trips_as_plain_data(last):
    raw = torch.load(last, map_location="cpu", weights_only=True)
    assert raw["format_version"] == 2 and isinstance(raw["config"], str)
    assert json.loads(raw["config"]) == load_checkpoint(last)["config"]
    with pytest.raises(TypeError, match="numpy"):
        save_checkpoint(os.path.join(os.path.dirname(last), "x.pth"), {**load_checkpoint(last), "extra": np.zeros(2)})


# --- 2. callables named in stored configs -------------------------------------------------------------------

def _with(ckpt, path, value):
    node = ckpt
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return ckpt


@pytest.mark.parametrize("key", [("nets", "policy", "_target_"), ("losses", "bc", "fn"), ("act", "fn")])
def test_checkpoint_config_naming_os_system_is_refused(last, tmp_path, key):
    marker = tmp_path / "pwned"
    ck = _with(load_checkpoint(last), ("config", *key), "os.system")
    bad = str(tmp_path / "bad.pth")
    save_checkpoint(bad, ck)
    with pytest.raises(CheckpointError, match=rf"{'.'.join(key)} names 'os.system'.*outside the trusted modules"):
        policy_from_checkpoint(ckpt_path=bad)
    assert not marker.exists()


def test_resume_of_a_run_whose_config_names_os_system(run, tmp_path, capsys):
    from modmimic.train import main

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    last = str(copy / "models" / "last.pth")
    ck = load_checkpoint(last)
    ck["trainer_state"]["config"]["nets"]["policy"]["_target_"] = "os.system"
    save_checkpoint(last, ck)
    assert main(["resume=true", f"resume_dir={copy}"]) == 2
    err = capsys.readouterr().err
    assert "nets.policy._target_ names 'os.system'" in err and ENV_VAR in err


def test_trusted_modules(monkeypatch):
    modmimic_only = stored_config_modules()
    with pytest.raises(UntrustedNameError):
        resolve("json.dumps", modmimic_only)
    assert resolve("json.dumps", stored_config_modules(["json"])) is json.dumps
    monkeypatch.setenv(ENV_VAR, "json, collections")
    assert resolve("json.dumps", stored_config_modules()) is json.dumps
    # a trusted module cannot re-export a foreign callable
    with pytest.raises(UntrustedNameError, match="omegaconf"):
        resolve("modmimic.trainer.OmegaConf", modmimic_only)
    assert resolve("modmimic.trainer.OmegaConf", None).__name__ == "OmegaConf"  # the command line trusts anything


# --- 3. experiment.name stays inside train.output_dir -------------------------------------------------------

@pytest.mark.parametrize("name", ["../escaped", "a/../../escaped", "/abs_escaped", ".."])
def test_experiment_name_cannot_leave_output_dir(reach_hdf5, tmp_path, tiny, capsys, name):
    from modmimic.train import main

    out = tmp_path / "a" / "out"
    out.mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*"))
    if name.startswith("/"):
        name = str(tmp_path / "abs_escaped")
    assert main(overrides(reach_hdf5, out, tiny, f"experiment.name={name}")) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "experiment.name" in err
    assert sorted(p for p in tmp_path.rglob("*")) == before
    with pytest.raises(ConfigError, match="experiment.name"):
        compose("bc", [f"experiment.name={name}"])


# --- 4. no silent replacement -------------------------------------------------------------------------------

def test_write_dataset_refuses_to_replace(last, tmp_path, capsys):
    from modmimic.eval import main

    target = tmp_path / "rollouts.hdf5"
    target.write_bytes(b"precious data")
    code = main([f"checkpoint={last}", "episodes=1", f"write_dataset={target}", "quiet=true"])
    err = capsys.readouterr().err
    assert code == 2 and "overwrite=true" in err and "13 bytes" in err
    assert target.read_bytes() == b"precious data"
    assert main([f"checkpoint={last}", "episodes=1", f"write_dataset={target}", "overwrite=true", "quiet=true",
                 "horizon=5"]) == 0
    with h5py.File(target) as f:
        assert list(f["data"]) == ["demo_0"]


@pytest.mark.parametrize("key", ["video", "json"])
def test_eval_outputs_refuse_to_replace(last, tmp_path, capsys, key):
    from modmimic.eval import main

    target = tmp_path / f"out.{key}"
    target.write_bytes(b"precious data")
    assert main([f"checkpoint={last}", "episodes=1", f"{key}={target}", "quiet=true"]) == 2
    err = capsys.readouterr().err
    assert f"{key}={target}" in err and "overwrite=true" in err and "13 bytes" in err
    assert target.read_bytes() == b"precious data"


def test_split_refuses_to_replace_masks(reach_hdf5, tmp_path, capsys):
    from modmimic.dataset import main

    p = tmp_path / "d.hdf5"
    shutil.copy(reach_hdf5, p)
    before = sha(p)
    assert main(["split", str(p), "--valid-fraction", "0.5", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "mask/valid (3 demos -> 6)" in err and "mask/train (9 demos -> 6)" in err
    assert sha(p) == before
    assert main(["split", str(p), "--valid-fraction", "0.5", "--seed", "3", "--overwrite"]) == 0
    with h5py.File(p) as f:
        assert len(f["mask/valid"]) == 6


# --- 5. file modes follow the umask -------------------------------------------------------------------------

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(str(tmp_path / "config.yaml"), "a: 1\n")
        save_checkpoint(str(tmp_path / "c.pth"), {"format": FORMAT})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "config.yaml").st_mode & 0o777 == mode
    assert os.stat(tmp_path / "c.pth").st_mode & 0o777 == mode


def test_run_files_follow_umask(run):
    for name in ("config.yaml", "models/last.pth"):
        assert os.stat(os.path.join(run, name)).st_mode & 0o777 == 0o644, name


# --- 10. incomplete checkpoints and checkpoints of another shape --------------------------------------------

@pytest.mark.parametrize("field", ["algo_name", "model", "config", "shape_metadata"])
def test_missing_field_is_named(last, tmp_path, field, capsys):
    from modmimic.eval import main

    ck = load_checkpoint(last)
    del ck[field]
    bad = str(tmp_path / "bad.pth")
    save_checkpoint(bad, ck)
    with pytest.raises(CheckpointError, match=f"no '{field}' field"):
        policy_from_checkpoint(ckpt_path=bad)
    assert main([f"checkpoint={bad}", "episodes=1"]) == 2
    err = capsys.readouterr().err
    assert f"'{field}'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("value,message", [(5, "'config'.*must be str or dict, got int"),
                                           ("[1, 2]", "'config' must hold a JSON object"),
                                           ("{not json", "'config' is not valid JSON")])
def test_non_dict_config_is_named(last, tmp_path, value, message):
    ck = load_checkpoint(last)
    ck["config"] = value
    bad = str(tmp_path / "bad.pth")
    torch.save({**ck}, bad)  # stored as is
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(bad)


def test_state_dict_is_not_a_checkpoint_and_not_dumped(last, tmp_path):
    policy, _ = policy_from_checkpoint(ckpt_path=last)
    p = str(tmp_path / "weights.pth")
    torch.save(policy.policy.nets.state_dict(), p)
    with pytest.raises(CheckpointError, match="not a modmimic checkpoint") as e:
        load_checkpoint(p)
    assert len(str(e.value)) < 400 and "tensor(" not in str(e.value)


def test_weights_of_another_action_dim(last, tmp_path):
    ck = load_checkpoint(last)
    ck["shape_metadata"]["ac_dim"] = 9
    bad = str(tmp_path / "bad.pth")
    save_checkpoint(bad, ck)
    with pytest.raises(CheckpointError, match=r"ac_dim 9.*is \[2, 16\] in the checkpoint, \[9, 16\] for the recipe") \
            as e:
        policy_from_checkpoint(ckpt_path=bad)
    assert len(str(e.value)) < 1000


def test_action_dim_of_another_environment(last):
    policy, _ = policy_from_checkpoint(ckpt_path=last)
    obs = {"pos": np.zeros(2), "goal_pos": np.zeros(2), "vel": np.zeros(2)}
    with pytest.raises(RolloutError, match="action dim 2 in the checkpoint, 9 in environment 'Other'"):
        check_policy_fits(policy, obs, 9, "Other")


# --- fuzz: malformed checkpoints are CheckpointErrors and stay untouched ------------------------------------

leaves = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True), st.text(max_size=8),
                   st.builds(lambda n: torch.zeros(n), st.integers(0, 3)))
containers = st.recursive(leaves, lambda c: st.one_of(st.lists(c, max_size=3),
                                                      st.dictionaries(st.text(max_size=6), c, max_size=3)),
                          max_leaves=8)
TOP = ["format", "format_version", "algo_name", "recipe_name", "config", "shape_metadata", "env_metadata",
       "obs_normalization_stats", "action_normalization_stats", "model", "variable_state", "trainer_state"]


def malformed(raw: dict, data: bytes):
    """A broken variant of a real checkpoint (``raw``: its stored dict, ``data``: its bytes): random bytes, a cut
    file, a random container, or the checkpoint with a field dropped or replaced (also inside the config)."""

    @st.composite
    def case(draw):
        kind = draw(st.sampled_from(["bytes", "truncated", "container", "drop", "replace", "replace_inner"]))
        if kind == "bytes":
            return "bytes", draw(st.binary(max_size=64))
        if kind == "truncated":
            return "bytes", data[:draw(st.integers(0, len(data) - 1))]
        if kind == "container":
            return "obj", draw(containers)
        ck = dict(raw)
        key = draw(st.sampled_from(TOP))
        if kind == "drop":
            ck.pop(key, None)
        elif kind == "replace":
            ck[key] = draw(containers)
        elif key == "config":  # the config's JSON: change one section
            cfg = json.loads(ck[key])
            k = draw(st.sampled_from(sorted(cfg)))
            cfg[k] = draw(containers.filter(lambda v: not isinstance(v, torch.Tensor)).map(
                lambda v: json.loads(json.dumps(v, default=str))))
            ck[key] = json.dumps(cfg)
        elif isinstance(ck.get(key), dict) and ck[key]:
            sub = dict(ck[key])
            sub[draw(st.sampled_from(sorted(sub)))] = draw(containers)
            ck[key] = sub
        return "obj", ck

    return case()


def test_malformed_checkpoints_are_checkpoint_errors(last, tmp_path_factory):
    raw = torch.load(last, map_location="cpu", weights_only=True)
    data = open(last, "rb").read()
    folder = tmp_path_factory.mktemp("fuzz")
    seen = {"ok": 0, "refused": 0}

    @settings(max_examples=120, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=malformed(raw, data))
    def check(case):
        kind, value = case
        p = str(folder / "case.pth")
        if kind == "bytes":
            with open(p, "wb") as f:
                f.write(value)
        else:
            torch.save(value, p)
        before = sha(p)
        try:
            policy_from_checkpoint(ckpt_path=p)
            seen["ok"] += 1
        except CheckpointError as e:
            assert str(e) and "\n" not in str(e).strip()
            seen["refused"] += 1
        assert sha(p) == before

    check()
    assert seen["refused"] >= 50 and seen["ok"] + seen["refused"] >= 100, seen
