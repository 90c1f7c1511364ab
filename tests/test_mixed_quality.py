"""Mixed-quality scripted demonstrations (``python -m modmimic.demos generate ... quality=mixed``): the generator's
layout, filter keys, rewards and determinism (fast, a few episodes), and the slow end-to-end claim that offline RL
(IQL) beats BC on them in Lift. Skipped where the simulator extra is not installed (``pip install -e '.[sim]'``)."""
import json

import h5py
import numpy as np
import pytest

from modmimic import demos as D

pytest.importorskip("robosuite", reason="simulator extra not installed (pip install -e '.[sim]')")

SEED, N = 1, 4  # episode_kinds(4, MIX, 1) == ["expert", "noisy", "let_go", "let_go"]


# --- pure parts ---------------------------------------------------------------------------------------------------

def test_mix_counts_are_the_largest_remainder_rounding_of_the_fractions():
    assert D.mix_counts(200, D.MIX) == {"expert": 40, "noisy": 20, "let_go": 100, "beside": 20, "short": 20}
    # 5 * (0.2, 0.1, 0.5, 0.1, 0.1) = (1, 0.5, 2.5, 0.5, 0.5): floors (1, 0, 2, 0, 0), the two left over to the
    # first-listed of the equal remainders
    assert D.mix_counts(5, D.MIX) == {"expert": 1, "noisy": 1, "let_go": 3, "beside": 0, "short": 0}
    assert D.mix_counts(3, {"a": 1, "b": 1, "c": 1}) == {"a": 1, "b": 1, "c": 1}
    for n in range(1, 30):
        assert sum(D.mix_counts(n, D.MIX).values()) == n


def test_episode_kinds_are_exact_counts_in_a_seeded_order():
    kinds = D.episode_kinds(50, D.MIX, seed=7)
    assert {k: kinds.count(k) for k in D.MIX} == D.mix_counts(50, D.MIX)
    assert kinds == D.episode_kinds(50, D.MIX, seed=7)
    assert kinds != D.episode_kinds(50, D.MIX, seed=8)
    assert D.episode_kinds(N, D.MIX, SEED) == ["expert", "noisy", "let_go", "let_go"]


def test_the_hard_mix_has_fewer_experts_and_near_decoys():
    hard = D.MIXES["hard"]
    assert D.MIXES["default"] is D.MIX and sum(hard.values()) == pytest.approx(1.0)
    assert D.mix_counts(200, hard) == {"expert": 20, "noisy": 20, "let_go": 80, "near": 60, "short": 20}
    assert "near" in D.FAILED and hard["expert"] < D.MIX["expert"]


@pytest.mark.parametrize("argv, message", [
    (["quality=mixed", "mix=hardest"], "mix must be one of default, hard, got 'hardest'"),
    (["mix=hard"], "mix=hard is for quality=mixed"),
    (["quality=mixed", "mix=hard", "task=Can"], "mix=hard is defined for Lift, not Can"),
])
def test_bad_mix_is_refused(argv, message, capsys):
    args = ["generate", "task=Lift", "n=2", "out=x.hdf5"]
    args = [a for a in args if a.split("=")[0] not in {b.split("=")[0] for b in argv}] + argv
    with pytest.raises(D.ArgumentError, match=message):
        D.parse(args)
    assert D.main(args) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_near_decoy_grasps_beside_the_cube_and_fails():
    """A `near` episode descends, closes its fingers and lifts like the expert, 3-4.5 cm to the side of the cube,
    which stays on the table."""
    env = D.make_env("Lift")
    try:
        traj, ok, T = D.expert_episode(env, D.variant_expert("Lift", "near", np.random.default_rng(0)), 3,
                                       D.MAX_STEPS["Lift"])
        expert, expert_ok, _ = D.expert_episode(env, D.LiftExpert(), 3, D.MAX_STEPS["Lift"])
    finally:
        env.close()
    assert expert_ok and not ok and T == D.NEAR_STEPS["Lift"]
    a, eef, cube = traj["actions"], traj["obs"]["robot0_eef_pos"], traj["obs"]["object"][:, :3]
    closed = np.flatnonzero(a[:, 6] > 0)
    assert len(closed) > 0 and (a[closed[0]:, 6] > 0).all()  # it closes and keeps holding, like the expert
    k = closed[0]
    assert 0.03 < np.linalg.norm(eef[k, :2] - cube[k, :2]) < 0.045
    assert eef[-1, 2] - eef[k, 2] > 0.15  # it lifts
    assert cube[:, 2].max() - cube[0, 2] < 0.005  # the cube does not (the finger may tip it over)
    assert not traj["rewards"].any()


def test_mixed_masks():
    names = ["demo_0", "demo_1", "demo_2", "demo_3", "demo_4"]
    kinds = ["let_go", "expert", "beside", "noisy", "let_go"]
    masks = D.mixed_masks(names, kinds, [False, True, False, True, True])
    assert masks == {"let_go": ["demo_0", "demo_4"], "expert": ["demo_1"], "beside": ["demo_2"],
                     "noisy": ["demo_3"], "failed": ["demo_0", "demo_2", "demo_4"],
                     "success": ["demo_1", "demo_3", "demo_4"]}


def test_bad_quality_is_refused():
    with pytest.raises(D.ArgumentError, match="quality must be expert or mixed"):
        D.parse(["generate", "task=Lift", "n=2", "out=x.hdf5", "quality=bad"])
    assert D.main(["generate", "task=Lift", "n=2", "out=x.hdf5", "quality=best"]) == 2
    with pytest.raises(ValueError, match="unknown episode kind 'lucky'"):
        D.variant_expert("Lift", "lucky", np.random.default_rng(0))


# --- a generated set of 4 episodes ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("mixed") / "lift_mixed.hdf5")
    stats = D.generate("Lift", N, path, seed=SEED, quality="mixed", valid_fraction=0.25, progress=None)
    return path, stats


def test_layout_masks_and_mix_attribute(mixed):
    path, stats = mixed
    names = [f"demo_{i}" for i in range(N)]
    with h5py.File(path) as f:
        assert sorted(f["data"]) == names
        masks = {k: sorted(n.decode() for n in f["mask"][k][()]) for k in f["mask"]}
        mix = json.loads(f["data"].attrs["mix"])
        assert f["data"].attrs["quality"] == "mixed"
        assert f["data"].attrs["total"] == sum(int(f[f"data/{n}"].attrs["num_samples"]) for n in names)
        for n in names:
            d = f[f"data/{n}"]
            T = int(d.attrs["num_samples"])
            assert d["actions"].shape == (T, 7) and d["rewards"].shape == (T,) and d["dones"].shape == (T,)
            assert d["states"].shape[0] == T and "model_file" in d.attrs
            for k in D.OBS_KEYS:
                assert d[f"obs/{k}"].shape[0] == T and d[f"next_obs/{k}"].shape[0] == T
                np.testing.assert_array_equal(d[f"obs/{k}"][1:], d[f"next_obs/{k}"][:-1])
    assert masks["expert"] == ["demo_0"] and masks["noisy"] == ["demo_1"]
    assert masks["let_go"] == masks["failed"] == ["demo_2", "demo_3"]
    assert sorted(masks["train"] + masks["valid"]) == names and len(masks["valid"]) == 1
    assert "demo_0" in masks["success"] and not set(masks["success"]) & set(masks["failed"])
    assert set(mix) == set(D.MIX) and mix == stats["mix"]
    assert {k: m["demos"] for k, m in mix.items()} == D.mix_counts(N, D.MIX)
    assert {k: m["fraction"] for k, m in mix.items()} == D.MIX
    assert sum(m["successes"] for m in mix.values()) == len(masks["success"])


def test_sparse_rewards_and_dones_agree_with_success(mixed):
    path, _ = mixed
    with h5py.File(path) as f:
        success = {n.decode() for n in f["mask/success"][()]}
        for n in f["data"]:
            d = f[f"data/{n}"]
            r, done = d["rewards"][()], d["dones"][()]
            assert set(np.unique(r)) <= {0.0, 1.0}
            np.testing.assert_array_equal(done, np.eye(len(done))[-1])
            if n in success:  # 1 from the first success on, and the episode ends 5 steps after it
                first = int(np.argmax(r))
                np.testing.assert_array_equal(r[first:], 1.0)
                assert len(r) - first == 6
            else:
                assert not r.any()


def test_an_episode_is_a_function_of_the_seed_and_its_index(mixed):
    """Episode i of a mixed set is replayed exactly by its kind's expert from seed + i with noise rng [seed, i]."""
    path, _ = mixed
    env = D.make_env("Lift")
    try:
        traj, _, _ = D.expert_episode(env, D.variant_expert("Lift", "noisy", np.random.default_rng([SEED, 1])),
                                      SEED + 1, D.MAX_STEPS["Lift"])
        other, _, _ = D.expert_episode(env, D.variant_expert("Lift", "noisy", np.random.default_rng([SEED + 1, 1])),
                                       SEED + 1, D.MAX_STEPS["Lift"])
    finally:
        env.close()
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["data/demo_1/actions"][()], traj["actions"])
        np.testing.assert_array_equal(f["data/demo_1/states"][()], traj["states"])
    assert not np.array_equal(other["actions"][:5], traj["actions"][:5])  # another noise seed, other actions


def test_let_go_follows_the_expert_until_it_grasps(mixed):
    """The let-go episodes are the expert's up to the lift: same actions from the same start, then the gripper
    opens (-1) and never closes again."""
    path, _ = mixed
    env = D.make_env("Lift")
    try:
        expert, ok, _ = D.expert_episode(env, D.LiftExpert(), SEED + 2, D.MAX_STEPS["Lift"])
    finally:
        env.close()
    assert ok
    with h5py.File(path) as f:
        a = f["data/demo_2/actions"][()]
    closed = np.flatnonzero(a[:, 6] > 0)  # the 8 closing steps
    assert len(closed) == 8 and closed[-1] - closed[0] == 7
    k = closed[-1] + 1
    np.testing.assert_array_equal(a[:k], expert["actions"][:k])
    assert expert["actions"][k, 6] == 1.0 and (a[k:, 6] == -1.0).all()


def test_misplaced_variants_fail():
    env = D.make_env("Lift")
    try:
        for kind in ("beside", "short"):
            _, ok, T = D.expert_episode(env, D.variant_expert("Lift", kind, np.random.default_rng(0)), 11,
                                        D.MAX_STEPS["Lift"], record=False)
            assert not ok and T == D.MISPLACED_STEPS["Lift"], kind
    finally:
        env.close()


def test_dataset_info_shows_the_mix(mixed, capsys):
    from modmimic.dataset import dataset_info, print_info

    path, _ = mixed
    print_info(dataset_info(path))
    out = capsys.readouterr().out
    assert "let_go 0.5 (2 demos, 0 successful)" in out and "expert 0.2 (1 demos" in out
    assert "failed (2 demos)" in out


# --- offline RL beats BC on mixed-quality Lift (slow) --------------------------------------------------------------

# BC and IQL with their fast presets (modmimic/conf/preset/fast.yaml: BC MLP 256x256, lr 1e-3, batch 256, 2 000 steps;
# IQL 256x256 nets, beta 0.1, tau 0.005, batch 256, 3 000 steps, as measured in docs/sim_figures.md "Mixed-quality
# Lift"); both without rollouts during training
QUIET = ["experiment.epoch_every_n_steps=100", "experiment.logging.log_tb=false", "experiment.rollout.enabled=false"]
BC = ["preset=fast", *QUIET]
IQL = ["preset=fast", *QUIET]
SLOW_DEMOS, SLOW_EPISODES, MARGIN = 60, 20, 0.25


def train_and_evaluate(recipe: str, overrides: list, data: str, out) -> float:
    import os

    from modmimic.config import compose
    from modmimic.eval import evaluate
    from modmimic.trainer import train

    r = train(compose(recipe, [*overrides, f"train.data={data}", f"train.output_dir={out}"]), progress=False)
    s = evaluate(os.path.join(r["run_dir"], "models", "last.pth"), episodes=SLOW_EPISODES, num_envs=1, horizon=200)
    return s["Success_Rate"]


@pytest.mark.slow
def test_iql_beats_bc_on_mixed_lift(tmp_path):
    """60 mixed Lift episodes (12 expert, 6 noisy, 30 let_go, 6 beside, 6 short; seed 0), BC (2 000 steps) and IQL
    (3 000 steps) with train.seed 1, 20 evaluation episodes each (seeds 100000-100019, horizon 200).
    Measured here (one thread, generation included): BC 2/20 = 0.10; IQL 9/20 = 0.45 with the mixture actor of
    its fast entry (206 s for the whole test), 12/20 = 0.60 with the Gaussian actor it had before (443 s under
    load). The margin asserted is 0.25 against the 0.35 measured: on 20 episodes a lead's standard error is ~0.13.
    On 200 mixed episodes, 3 seeds x 50 episodes (docs/learning.md): IQL 0.88 / 0.90 / 0.90, BC 0.10 / 0.24 / 0.14."""
    import torch

    torch.set_num_threads(1)
    data = str(tmp_path / "lift_mixed.hdf5")
    D.generate("Lift", SLOW_DEMOS, data, seed=0, quality="mixed", progress=None)
    bc = train_and_evaluate("bc", BC, data, tmp_path / "bc")
    iql = train_and_evaluate("iql", IQL, data, tmp_path / "iql")
    print(f"mixed Lift ({SLOW_DEMOS} episodes): BC {bc:.2f}, IQL {iql:.2f} over {SLOW_EPISODES} episodes")
    assert iql - bc >= MARGIN, f"IQL {iql:.2f} vs BC {bc:.2f}: IQL should lead by >= {MARGIN}"


def test_mixed_quality_of_a_task_without_failing_variants_is_bad_input(tmp_path):
    from modmimic.demos import main

    out = tmp_path / "square_mixed.hdf5"
    assert main(["generate", "task=Square", "n=2", f"out={out}", "quality=mixed"]) == 2
    assert not out.exists()
