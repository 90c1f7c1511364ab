"""Property-based fuzzing of bad input: generated malformed robomimic HDF5 files and config values.

Every case must end with exit status 0 or 2 (never 1: a training failure), a one-line message without a traceback,
and the dataset byte-identical afterwards; and the status must be the one the case calls for (2 exactly when the
input has a defect that training refuses).

Each case drives the command line's own code path in-process (``build_config`` -> ``_task`` -> ``train`` ->
``report`` for training, ``modmimic.dataset.main`` for ``info``): a subprocess per case costs seconds of torch
import. ``test_in_process_equals_the_cli`` runs a few cases through the real ``python -m`` commands to show the
in-process path gives the same status and message.
"""
import copy
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from omegaconf import OmegaConf

from modmimic import dataset as dataset_cli
from modmimic import train as train_cli
from modmimic.config import check_types, compose, validate

OBS = ["pos", "vel"]
BASE = ["recipe=bc", "observation.modalities.obs.low_dim=[pos,vel]", "algo.actor_layer_dims=[8]",
        "train.num_epochs=1", "experiment.epoch_every_n_steps=1", "train.batch_size=4",
        "experiment.rollout.enabled=false", "experiment.logging.log_tb=false",
        "experiment.logging.terminal_output_to_txt=false", "experiment.save.every_n_epochs=null"]
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


# --- generated datasets -------------------------------------------------------------------------------------
#
# A case is a clean dataset (1-3 demos of 1-5 steps, float32/float64 observations, in-range actions, optional
# filter key) plus at most one mutation. TRAIN/INFO: whether training / ``dataset info`` must refuse it.

REFUSE, ACCEPT = 2, 0
MUTATIONS = {  # name: (training's status, info's status)
    None: (ACCEPT, ACCEPT),
    "empty_demo": (REFUSE, REFUSE),
    "empty_demo_outside_filter": (ACCEPT, REFUSE),
    "num_samples_off": (REFUSE, REFUSE),
    "num_samples_missing": (REFUSE, REFUSE),
    "num_samples_string": (REFUSE, REFUSE),
    "obs_rows_short": (REFUSE, REFUSE),
    "string_obs": (REFUSE, REFUSE),
    "string_actions": (REFUSE, REFUSE),
    "nan_obs": (REFUSE, REFUSE),
    "inf_actions": (REFUSE, REFUSE),
    "nan_rewards": (REFUSE, REFUSE),
    "missing_obs": (REFUSE, REFUSE),
    "missing_next_obs": (ACCEPT, ACCEPT),  # bc does not read next_obs (info warns when other demos have it)
    "obs_shape_differs": (REFUSE, REFUSE),
    "action_dims_differ": (REFUSE, REFUSE),
    "no_data_group": (REFUSE, REFUSE),
    "data_is_a_dataset": (REFUSE, REFUSE),
    "env_args_not_json": (REFUSE, REFUSE),
    "env_args_not_a_string": (REFUSE, REFUSE),
    "mask_names_missing_demo": (REFUSE, ACCEPT),
    "all_demos_misnamed": (REFUSE, REFUSE),
    "demo_is_a_dataset": (REFUSE, REFUSE),
    # accepted (some with a warning)
    "one_demo_misnamed": (ACCEPT, ACCEPT),
    "huge_int_actions": (ACCEPT, ACCEPT),
    "bool_obs": (ACCEPT, ACCEPT),
    "bad_states_rows": (ACCEPT, ACCEPT),
    "rewards_missing_in_one_demo": (ACCEPT, ACCEPT),
    "no_env_args": (ACCEPT, ACCEPT),
    "extra_attrs": (ACCEPT, ACCEPT),
}


WARNS = {"one_demo_misnamed": "not named demo_<N> (traj_0)", "huge_int_actions": "outside [-1, 1]"}


@st.composite
def hdf5_cases(draw):
    n = draw(st.integers(1, 3))
    spec = {"lengths": [draw(st.integers(1, 5)) for _ in range(n)], "dtype": draw(st.sampled_from(["f4", "f8"])),
            "filter": draw(st.booleans()), "seed": draw(st.integers(0, 2**16)),
            "mutation": draw(st.sampled_from(list(MUTATIONS))), "demo": draw(st.integers(0, n - 1))}
    m = spec["mutation"]
    if m in ("obs_shape_differs", "action_dims_differ", "one_demo_misnamed", "rewards_missing_in_one_demo",
             "missing_obs") and n < 2:
        spec["lengths"].append(2)  # these need a second demo
    if m == "obs_rows_short":
        spec["lengths"][spec["demo"]] = max(2, spec["lengths"][spec["demo"]])
    if m in ("empty_demo_outside_filter", "mask_names_missing_demo"):
        spec["filter"] = True
    if m == "one_demo_misnamed":
        spec["filter"] = False  # a filter key names its demos: the other groups are not looked at
    return spec


def write_case(path, spec):
    rng = np.random.default_rng(spec["seed"])
    m, j = spec["mutation"], spec["demo"]
    lengths = list(spec["lengths"])
    if m in ("empty_demo", "empty_demo_outside_filter"):
        lengths.append(0) if m == "empty_demo_outside_filter" else lengths.__setitem__(j, 0)
    names = [f"demo_{i}" for i in range(len(lengths))]
    with h5py.File(path, "w") as f:
        data = f.create_group("data" if m != "no_data_group" else "dataa")
        for i, (name, L) in enumerate(zip(names, lengths)):
            if m == "demo_is_a_dataset" and i == j:
                data.create_dataset(name, data=np.zeros((L, 2)))
                continue
            g = data.create_group(name)
            g.attrs["num_samples"] = L
            for grp in ("obs", "next_obs"):
                for k in OBS:
                    g.create_dataset(f"{grp}/{k}", data=rng.normal(size=(L, 2)).astype(spec["dtype"]))
            g.create_dataset("actions", data=rng.uniform(-1, 1, (L, 2)))
            g.create_dataset("rewards", data=np.zeros(L))
            g.create_dataset("dones", data=(np.arange(L) == L - 1).astype(np.int64))
            g.create_dataset("states", data=np.zeros((L, 3)))
            if i != j:
                continue
            if m == "num_samples_off":
                g.attrs["num_samples"] = L + 1
            elif m == "num_samples_missing":
                del g.attrs["num_samples"]
            elif m == "num_samples_string":
                g.attrs["num_samples"] = "many"
            elif m == "obs_rows_short":
                del g["obs/pos"]
                g["obs/pos"] = np.zeros((L - 1, 2))
            elif m == "string_obs":
                del g["obs/pos"]
                g["obs/pos"] = np.array([[b"ab", b"cd"]] * L)
            elif m == "string_actions":
                del g["actions"]
                g["actions"] = np.array([[b"up", b"go"]] * L)
            elif m == "nan_obs":
                g["obs/pos"][rng.integers(L)] = [np.nan, 0.0]
            elif m == "inf_actions":
                g["actions"][rng.integers(L)] = [0.0, -np.inf]
            elif m == "nan_rewards":
                g["rewards"][rng.integers(L)] = np.nan
            elif m == "missing_obs":
                del g["obs/vel"]
            elif m == "missing_next_obs":
                del g["next_obs/pos"]
            elif m == "obs_shape_differs":
                for grp in ("obs", "next_obs"):
                    del g[f"{grp}/pos"]
                    g[f"{grp}/pos"] = np.zeros((L, 3))
            elif m == "action_dims_differ":
                del g["actions"]
                g["actions"] = np.zeros((L, 3))
            elif m == "huge_int_actions":
                del g["actions"]
                g["actions"] = np.full((L, 2), 50, dtype=np.int64)
            elif m == "bool_obs":
                del g["obs/pos"]
                g["obs/pos"] = rng.integers(0, 2, (L, 2)).astype(bool)
            elif m == "bad_states_rows":
                del g["states"]
                g["states"] = np.zeros((L + 2, 3))
            elif m == "rewards_missing_in_one_demo":
                del g["rewards"]
            elif m == "extra_attrs":
                g.attrs["model_file"] = "<mujoco/>"
                g.attrs["weird"] = np.arange(3)
        if m == "data_is_a_dataset":
            del f["data"]
            f["data"] = np.zeros(3)
        elif m == "one_demo_misnamed":
            data.move(names[-1], "traj_0")
            names = names[:-1]
        elif m == "all_demos_misnamed":
            for i, name in enumerate(names):
                data.move(name, f"episode_{i}")
            names = []
        if m == "env_args_not_json":
            data.attrs["env_args"] = "{env_name: Lift"
        elif m == "env_args_not_a_string":
            data.attrs["env_args"] = 7
        elif m != "no_env_args":
            data.attrs["env_args"] = '{"env_name": "Fuzz", "type": 2, "env_kwargs": {}}'
        if spec["filter"]:
            keep = [n for n, L in zip(names, lengths) if L > 0] if m == "empty_demo_outside_filter" else names
            if m == "mask_names_missing_demo":
                keep = keep + ["demo_99"]
            f.create_dataset("mask/train", data=np.array(keep, dtype="S"))


@pytest.fixture(scope="module", autouse=True)
def no_plots():
    """Drawing curves.png (about 1 s a run) is not what these tests check."""
    from modmimic.logger import RunLogger

    mp = pytest.MonkeyPatch()
    mp.setattr(RunLogger, "plot_curves", lambda self: None)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def base_cfg():
    return compose("bc", [o for o in BASE if not o.startswith("recipe=")])


def run_training(cfg, capsys, caught=None):
    """The command line's path for one built config: ``_task`` (train, then ``report`` and ``sys.exit``).
    Warnings go to ``caught`` (a list), not stderr."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            train_cli._task([], False, cfg)
            code = 0
        except SystemExit as e:
            code = e.code
    if caught is not None:
        caught += [str(x.message) for x in w]
    return code, capsys.readouterr().err


def check_message(code, err):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    if code:
        assert len(lines) == 1, err  # one paragraph
    return lines


@settings(FUZZ, max_examples=100)
@given(spec=hdf5_cases())
def test_fuzz_hdf5_files(spec, base_cfg, capsys):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "fuzz.hdf5")
        write_case(path, spec)
        before = sha(path)
        cfg = copy.deepcopy(base_cfg)
        OmegaConf.update(cfg, "train.data", path)
        OmegaConf.update(cfg, "train.output_dir", os.path.join(d, "out"))
        if spec["filter"]:
            OmegaConf.update(cfg, "train.hdf5_filter_key", "train")
        caught = []
        code, err = run_training(cfg, capsys, caught)
        want_train, want_info = MUTATIONS[spec["mutation"]]
        assert code == want_train, (spec, err)
        check_message(code, err)
        if code:
            assert path in err, err  # names the file (and the demo/key: see the unit tests)
        if spec["mutation"] in WARNS:
            assert any(WARNS[spec["mutation"]] in w for w in caught), caught
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # info reports in its output, never through warnings
            code = dataset_cli.main(["info", path])
        out = capsys.readouterr()
        assert code == want_info, (spec, out.out[-2000:], out.err)
        check_message(code, out.err)
        assert sha(path) == before


# --- generated config values --------------------------------------------------------------------------------

LR = "algo.optim_params.policy.learning_rate"
ANY = st.one_of(st.none(), st.integers(-2, 3), st.floats(allow_nan=True, allow_infinity=True, width=32),
                st.booleans(), st.sampled_from(["x", "1"]), st.lists(st.integers(-1, 3), max_size=3))


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v):
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and bool(np.isfinite(v))


def positive_int(v):
    return is_int(v) and v >= 1


RULES = {  # key: (the value accepted?, given the other values)
    "experiment.epoch_every_n_steps": lambda v, c: v is None or positive_int(v),
    "experiment.validation_epoch_every_n_steps": lambda v, c: v is None or positive_int(v),
    "experiment.save.every_n_epochs": lambda v, c: v is None or positive_int(v),
    "experiment.save.every_n_seconds": lambda v, c: v is None or (is_num(v) and v > 0),
    "experiment.rollout.n": lambda v, c: positive_int(v),
    "experiment.rollout.horizon": lambda v, c: positive_int(v),
    "experiment.rollout.rate": lambda v, c: positive_int(v),
    "experiment.rollout.warmstart": lambda v, c: is_int(v) and v >= 0,
    "train.max_grad_norm": lambda v, c: v is None or (is_num(v) and v > 0),
    "train.num_epochs": lambda v, c: positive_int(v),
    "train.stop_after_epoch": lambda v, c: v is None or (is_int(v) and 1 <= v <= c.get("train.num_epochs", 1)),
    "train.batch_size": lambda v, c: positive_int(v),
    f"{LR}.initial": lambda v, c: is_num(v) and v >= 0,
    "algo.optim_params.policy.regularization.L2": lambda v, c: is_num(v) and v >= 0,
    f"{LR}.epoch_schedule": lambda v, c: isinstance(v, list) and (not v or (
        all(is_int(e) and e >= 1 for e in v) and all(a < b for a, b in zip(v, v[1:])))),
    f"{LR}.decay_factor": lambda v, c: not c.get(f"{LR}.epoch_schedule") or (is_num(v) and v > 0),
}
INT_KEYS = {"train.num_epochs", "train.batch_size", "experiment.epoch_every_n_steps",
            "experiment.validation_epoch_every_n_steps", "experiment.save.every_n_epochs", "experiment.rollout.n",
            "experiment.rollout.horizon", "experiment.rollout.rate", "experiment.rollout.warmstart"}


FLOAT_KEYS = {f"{LR}.initial", "algo.optim_params.policy.regularization.L2", f"{LR}.decay_factor"}


def type_ok(k, v) -> bool:
    """``check_types``: null anywhere; an int key takes ints, a float key ints or floats, a list key lists; a key
    whose default is null takes anything."""
    if v is None:
        return True
    if k in INT_KEYS:
        return is_int(v)
    if k in FLOAT_KEYS:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if k == f"{LR}.epoch_schedule":
        return isinstance(v, list)
    return True


def accepted(values: dict) -> bool:
    """What the rules above (the documented contract) say of ``values``."""
    return all(type_ok(k, v) and RULES[k](v, values) for k, v in values.items())


@settings(FUZZ, max_examples=60)
@given(values=st.dictionaries(st.sampled_from(sorted(RULES)), ANY, min_size=1, max_size=3))
def test_fuzz_config_values(values, base_cfg, reach_hdf5, capsys):
    """Values set on a composed config, then the checks ``compose`` runs (``check_types``, ``validate``) and,
    when they pass, training: exit 2 naming a key exactly when the contract refuses a value, else 0."""
    if values.get(f"{LR}.epoch_schedule") is None:
        values.pop(f"{LR}.epoch_schedule", None)  # a null schedule means none
    values = {k: v for k, v in values.items() if not (k in ("train.num_epochs", "experiment.epoch_every_n_steps")
                                                      and is_int(v) and v > 2)}  # keep runs short
    before = sha(reach_hdf5)
    with tempfile.TemporaryDirectory() as d:
        cfg = copy.deepcopy(base_cfg)
        OmegaConf.set_struct(cfg, False)
        for k, v in values.items():
            OmegaConf.update(cfg, k, v, merge=False)
        OmegaConf.update(cfg, "train.data", str(reach_hdf5))
        OmegaConf.update(cfg, "train.output_dir", d)
        OmegaConf.update(cfg, "observation.modalities.obs.low_dim", ["pos", "goal_pos", "vel"])
        OmegaConf.set_struct(cfg, True)
        capsys.readouterr()
        try:
            check_types(cfg, base_cfg)
            validate(cfg)
        except Exception as e:  # noqa: BLE001 - the CLI reports whatever composing raises
            code, err = train_cli.report(e), capsys.readouterr().err
        else:
            code, err = run_training(cfg, capsys)
        want = ACCEPT if accepted(values) else REFUSE
        assert code == want, (values, err)
        check_message(code, err)
        if code:
            assert any(k in err for k in values), err  # names the key
    assert sha(reach_hdf5) == before


# --- the in-process path is the command line's --------------------------------------------------------------

def cli(module, args, cwd):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_in_process_equals_the_cli(reach_hdf5, tmp_path, capsys):
    cases = []
    for i, mutation in enumerate(["string_obs", "empty_demo"]):
        p = str(tmp_path / f"case{i}.hdf5")
        write_case(p, {"lengths": [3, 2], "dtype": "f8", "filter": False, "seed": i, "mutation": mutation,
                       "demo": 1})
        cases.append(p)
    out = str(tmp_path / "out")
    args = [a for a in BASE]
    train_cases = [[f"dataset={cases[0]}", f"train.output_dir={out}", *args],
                   [f"dataset={reach_hdf5}", f"train.output_dir={out}", *args,
                    "observation.modalities.obs.low_dim=[pos,goal_pos,vel]", f"{LR}.decay_factor=-1",
                    f"{LR}.epoch_schedule=[1]"]]
    for a in train_cases:
        r = cli("modmimic.train", a, tmp_path)
        code = train_cli.main(a)
        err = capsys.readouterr().err
        assert (r.returncode, r.stderr.strip().splitlines()[-1]) == (code, err.strip().splitlines()[-1]) \
            and code == 2, (r.stderr, err)
    for p in cases[1:2]:
        r = cli("modmimic.dataset", ["info", p], tmp_path)
        code = dataset_cli.main(["info", p])
        cap = capsys.readouterr()
        assert (r.returncode, r.stderr, r.stdout) == (code, cap.err, cap.out) and code == 2


# --- run directories ------------------------------------------------------------------------------------------
#
# A finished run directory, copied and then changed by one mutation: a config.yaml naming a callable outside
# modmimic (the run's last.pth removed, so resume restarts from config.yaml) or using an interpolation resolver, a
# config.yaml of garbage, a YAML python tag, deep nesting, a cut checkpoint, a link to a folder or file outside, a
# torn metrics line, a leftover temporary file. ``python -m modmimic.train resume=true resume_dir=<copy>``
# (in-process) must exit 0 or 2 as the case calls for, print one line when it fails, create no marker file and
# leave the folder outside the run directory byte-identical.

DANGEROUS = ["os.system", "subprocess.call", "logging.basicConfig", "builtins.eval", "shutil.rmtree",
             "modmimic.trainer.os.system", "pathlib.Path.touch", "torch.save"]
NAME_PATHS = [("nets", "policy", "_target_"), ("losses", "bc", "fn"), ("act", "fn"), ("batch", "fn")]
RUN_MUTATIONS = {  # name: exit status of resume
    "untrusted_name": 2, "resolver": 2, "garbage_yaml": 2, "python_tag": 2, "deep_yaml": 2, "cut_checkpoint": 2,
    "link_logs": 2, "link_log_file": 2, "link_checkpoint": 2, "link_config": 2, "fifo": 2,
    "torn_metrics": 0, "stale_tmp": 0, "none": 0}


@pytest.fixture(scope="module")
def finished_run(reach_hdf5, tmp_path_factory):
    from modmimic.trainer import train

    out = tmp_path_factory.mktemp("finished")
    cfg = compose("bc", [o for o in BASE if not o.startswith("recipe=")] + [
        f"train.data={reach_hdf5}", f"train.output_dir={out}", "observation.modalities.obs.low_dim=[pos,goal_pos,vel]",
        "experiment.name=fuzz"])
    return train(cfg, progress=False)["run_dir"]


def mutate_run(run, outside, mutation, draw_name, draw_path, marker):
    import yaml

    cfg_path = os.path.join(run, "config.yaml")
    last = os.path.join(run, "models", "last.pth")
    if mutation == "untrusted_name":
        cfg = yaml.safe_load(open(cfg_path))
        node = cfg
        for k in draw_path[:-1]:
            node = node.setdefault(k, {}) if isinstance(node.get(k), dict) or k not in node else node[k]
        node[draw_path[-1]] = draw_name
        node.update({"command": f"touch {marker}", "filename": str(marker), "filemode": "w"})
        open(cfg_path, "w").write(yaml.safe_dump(cfg))
        os.unlink(last)
    elif mutation == "resolver":
        cfg = yaml.safe_load(open(cfg_path))
        cfg["experiment"]["name"] = draw_name
        open(cfg_path, "w").write(yaml.safe_dump(cfg))
        os.unlink(last)
    elif mutation == "garbage_yaml":
        open(cfg_path, "wb").write(draw_name)
        os.unlink(last)
    elif mutation == "python_tag":
        open(cfg_path, "a").write(f"evil: !!python/object/apply:os.system ['touch {marker}']\n")
        os.unlink(last)
    elif mutation == "deep_yaml":
        open(cfg_path, "w").write("train: " + "[" * 3000 + "]" * 3000 + "\n")
        os.unlink(last)
    elif mutation == "cut_checkpoint":
        data = open(last, "rb").read()
        open(last, "wb").write(data[:len(data) * 2 // 3])
    elif mutation == "link_logs":
        shutil.rmtree(os.path.join(run, "logs"))
        os.symlink(outside, os.path.join(run, "logs"))
    elif mutation == "link_log_file":
        os.unlink(os.path.join(run, "logs", "metrics.jsonl"))
        os.symlink(os.path.join(outside, "victim.txt"), os.path.join(run, "logs", "metrics.jsonl"))
    elif mutation == "link_checkpoint":
        shutil.copy(last, os.path.join(outside, "other.pth"))
        os.unlink(last)
        os.symlink(os.path.join(outside, "other.pth"), last)
    elif mutation == "link_config":
        os.unlink(cfg_path)
        os.symlink(os.path.join(outside, "victim.txt"), cfg_path)
    elif mutation == "fifo":
        os.unlink(os.path.join(run, "logs", "log.txt")) if os.path.exists(os.path.join(run, "logs", "log.txt")) \
            else None
        os.mkfifo(os.path.join(run, "logs", "log.txt"))
    elif mutation == "torn_metrics":
        open(os.path.join(run, "logs", "metrics.jsonl"), "a").write('{"epoch": 2, "Train/Lo')
    elif mutation == "stale_tmp":
        open(os.path.join(run, "models", ".last.pth.abc.tmp"), "wb").write(b"partial")


def snapshot(folder):
    return {os.path.relpath(os.path.join(r, f), folder): sha(os.path.join(r, f))
            for r, _, fs in os.walk(folder) for f in fs}


@st.composite
def run_cases(draw):
    mutation = draw(st.sampled_from(sorted(RUN_MUTATIONS)))
    name = draw(st.sampled_from(DANGEROUS))
    if mutation == "resolver":
        name = draw(st.sampled_from(["${oc.env:HOME}", "${oc.decode:'[1]'}", "${evil:x}", "a${oc.create:{}}b",
                                     "${ oc.env : PATH }"]))
    elif mutation == "garbage_yaml":
        name = draw(st.binary(max_size=200))
    return mutation, name, draw(st.sampled_from(NAME_PATHS))


def test_fuzz_run_directories(finished_run, tmp_path_factory, capsys):
    seen = set()

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=run_cases())
    def check(case):
        mutation, name, path = case
        folder = tmp_path_factory.mktemp("rundir")
        run, outside, marker = folder / "run", folder / "outside", folder / "pwned"
        shutil.copytree(finished_run, run)
        outside.mkdir()
        (outside / "victim.txt").write_text("precious\n")
        mutate_run(str(run), str(outside), mutation, name, path, marker)
        before = snapshot(outside)
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = train_cli.main(["resume=true", f"resume_dir={run}", "train.num_epochs=3"])
        err = capsys.readouterr().err
        assert code == RUN_MUTATIONS[mutation], (mutation, name, err)
        check_message(code, err)
        assert not marker.exists(), (mutation, name)
        assert snapshot(outside) == before, (mutation, name)
        seen.add(mutation)

    check()
    assert len(seen) >= 10, seen
