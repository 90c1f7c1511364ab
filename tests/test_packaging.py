"""The built wheel installs the design card's folders inside the package namespace (modmimic.components,
modmimic.recipes) and a recipe builds and trains from outside the repository."""
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    ROOT], check=True, capture_output=True, timeout=600)
    (whl,) = [p for p in out.iterdir() if p.suffix == ".whl"]
    return whl


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "modmimic/components/nets/policy.py" in names
    assert "modmimic/recipes/bc_rnn.yaml" in names and "modmimic/conf/base.yaml" in names
    # no generic top-level names dropped into site-packages
    assert not any(n.startswith(("components/", "recipes/", "tests/")) for n in names)


def test_installed_wheel_runs_a_recipe_outside_the_repo(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    script = textwrap.dedent("""
        import modmimic, modmimic.components
        assert modmimic.__file__.startswith(%r), modmimic.__file__
        assert modmimic.components.__file__.startswith(%r), modmimic.components.__file__
        from modmimic.config import compose, list_recipes
        from modmimic.algo import algo_factory
        from modmimic.data.synthetic import make_reach_dataset
        from modmimic.data.hdf5 import load_episode_store
        from modmimic.data.sampler import WindowSampler
        assert "bc_rnn" in list_recipes()
        make_reach_dataset("d.hdf5", n_demos=4)
        cfg = compose("bc_rnn", ["observation.modalities.obs.low_dim=[pos,goal_pos,vel]", "algo.rnn.hidden_dim=8",
                                 "algo.actor_layer_dims=[]"])
        st = load_episode_store("d.hdf5", ["pos", "goal_pos", "vel"])
        algo = algo_factory("bc", cfg, st.obs_shapes(), st.ac_dim)
        s = WindowSampler(st, 4, seq_length=10)
        print(algo.train_on_batch(algo.process_batch_for_training(s.sample()), 1)["Loss"].item())
    """) % (str(target), str(target))
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.strip().splitlines()[-1]) > 0
